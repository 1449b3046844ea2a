"""The stages of a local run as child processes: `finetune train|benchmark --run URI`, the
same entrypoints the pods run, with their output captured and their progress displayed.

A child starts with SIGINT ignored (an ignored signal stays ignored across exec, and Python
then installs no KeyboardInterrupt handler), so Ctrl-C in the terminal is handled by
`finetune run` alone, which stops the child with SIGTERM, the signal Kubernetes sends a pod
(the trainer saves a checkpoint on it). The child stays in the terminal's process group, so
closing the terminal (SIGHUP) still ends it.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from finetune_core.api import Progress as TrainingProgress
from finetune_core.api import ResolvedSpec
from finetune_core.exit_codes import exit_for_signal
from finetune_core.layout import RunPaths
from finetune_core.store import ENDPOINT_ENV, STORE_ENV, ArtifactStore

POLL_SECONDS = 0.5
PR_SET_PDEATHSIG = 1  # linux/prctl.h
# How long a stage may take to stop after SIGTERM (the trainer finishes its step and saves a
# checkpoint) before it is killed; a second Ctrl-C kills it at once.
STOP_GRACE_SECONDS = 120.0
LOG_TAIL_LINES = 15


class Interruption:
    """Ctrl-C and SIGTERM while the pipeline runs: counted, not raised, so a running stage is
    always stopped cleanly and the status written before `finetune run` exits."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.count = 0

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = self.signum or signum
        self.count += 1

    @property
    def exit_code(self) -> int:
        """128 + the signal, as a shell reports it: 130 for Ctrl-C."""
        return exit_for_signal(self.signum or signal.SIGINT)

    @contextmanager
    def installed(self) -> Iterator[Interruption]:
        if threading.current_thread() is not threading.main_thread():
            yield self  # signals reach only the main thread: nothing to catch here
            return
        previous = {
            sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


@contextmanager
def sigint_ignored() -> Iterator[None]:
    """SIGINT ignored while a child is started, so that the child inherits SIG_IGN."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may change signal handlers
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies, however it dies (SIGKILL
    included), so a stage never outlives the `finetune run` that started it (Linux)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Watcher:
    """Shows a stage's progress while it runs."""

    def __init__(self, display: Progress):
        self.display = display

    def refresh(self) -> None:
        """Poll what the stage writes (called every POLL_SECONDS while it runs, and once after)."""

    def on_line(self, line: str) -> None:
        """One line of the stage's output (called from the log reader thread)."""


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "-:--:--"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


class TrainingWatcher(Watcher):
    """Steps, loss and ETA from the trainer's progress.json."""

    def __init__(self, console: Console, store: ArtifactStore, run: RunPaths):
        super().__init__(
            Progress(
                TextColumn("[bold]train[/]"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("steps  loss {task.fields[loss]}  ETA {task.fields[eta]}"),
                TimeElapsedColumn(),
                console=console,
            )
        )
        self.store, self.run = store, run
        self.task = self.display.add_task("train", total=None, loss="-", eta=_eta(None))

    def refresh(self) -> None:
        try:
            progress = TrainingProgress.model_validate(
                self.store.get_json_or_none(self.run.progress)
            )
        except ValidationError:  # not written yet
            return
        self.display.update(
            self.task,
            completed=progress.step or 0,
            total=progress.total_steps,
            loss="-" if progress.loss is None else f"{progress.loss:.4f}",
            eta=_eta(progress.eta_seconds),
        )


class BenchmarkWatcher(Watcher):
    """Samples per SLA profile, from the benchmark's JSON lines on stdout:
    `{"profile": NAME, "warmup": N, ...}` then `{"profile": NAME, "sample": N, ...}`."""

    def __init__(self, console: Console, spec: ResolvedSpec):
        super().__init__(
            Progress(
                TextColumn("[bold]benchmark[/] {task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("samples"),
                TimeElapsedColumn(),
                console=console,
            )
        )
        samples = self.initial = spec.benchmark.samples
        # Profiles run one after another: each one's clock starts with its first sample.
        self.tasks = {
            p.name: self.display.add_task(p.name, total=samples, start=False)
            for p in spec.benchmark.sla
        }

    def on_line(self, line: str) -> None:
        if not line.startswith("{"):
            return
        try:
            event = json.loads(line)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        name = str(event.get("profile"))
        task = self.tasks.get(name)
        if task is None:
            return
        self.display.start_task(task)  # no-op once started
        if isinstance(event.get("warmup"), int):
            self.display.update(task, description=f"{name} (warm-up {event['warmup']})")
        elif isinstance(event.get("sample"), int):
            number = event["sample"]
            if number <= self.initial:
                self.display.update(task, description=name, completed=number)
            else:  # near the limit the verdict asked for more samples (up to maxSamples)
                label = f"{name} (more samples near the limit)"
                self.display.update(task, description=label, completed=number, total=number)


class StageProcess:
    """One `finetune <stage> --run URI` child: started, polled and, on request, stopped;
    its output goes to a log file (its last lines kept for the failure message) and its
    progress to the watcher's display."""

    def __init__(
        self,
        command: list[str],
        env: dict[str, str],
        log_path: Path,
        watcher: Watcher,
        on_exit: Callable[[StageProcess, int], None] | None = None,
    ):
        self.command = command
        self.env = env
        self.log_path = log_path
        self.watcher = watcher
        self.on_exit = on_exit
        self.tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self.code: int | None = None
        # When it started and ended (UTC), for the run's GPU-hours.
        self.started_at: datetime | None = None
        self.finished_at: datetime | None = None

    def start(self) -> None:
        self.started_at = datetime.now(UTC)
        with sigint_ignored():
            self._process = subprocess.Popen(
                self.command,
                env=self.env,
                preexec_fn=die_with_parent,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
            )
        self._reader = threading.Thread(target=self._read, args=(self._process,), daemon=True)
        self._reader.start()
        self.watcher.display.start()

    def poll(self) -> int | None:
        """The exit code once it ended, else None (and the display refreshed)."""
        if self.code is not None:
            return self.code
        assert self._process is not None
        code = self._process.poll()
        self.watcher.refresh()
        if code is not None:
            self._finish(code)
        return code

    def stop(self, interruption: Interruption) -> int:
        """SIGTERM, then wait for the child to save and exit; kill it after the grace period
        or on another Ctrl-C."""
        assert self._process is not None
        process = self._process
        self.watcher.display.console.print("Stopping the stage: it saves its state first...")
        process.send_signal(signal.SIGTERM)
        seen = interruption.count
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while process.poll() is None:
            if interruption.count > seen or time.monotonic() > deadline:
                process.kill()
            time.sleep(0.1)
        code = process.wait()
        self._finish(code)
        return code

    def _finish(self, code: int) -> None:
        self.code = code
        self.finished_at = datetime.now(UTC)
        if self._reader is not None:
            self._reader.join(timeout=10)
        self.watcher.refresh()
        self.watcher.display.stop()
        if self.on_exit is not None:
            self.on_exit(self, code)

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        with self.log_path.open("w", encoding="utf-8") as log:
            for line in process.stdout:
                log.write(line)
                log.flush()
                self.tail.append(line.rstrip("\n"))
                self.watcher.on_line(line)


def stage_env(store: ArtifactStore, endpoint: str | None) -> dict[str, str]:
    """What a pod would get: the store and its endpoint; credentials are inherited."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env[STORE_ENV] = store.uri()
    if endpoint:
        env[ENDPOINT_ENV] = endpoint
    return env
