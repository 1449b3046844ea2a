"""Training progress for people and for the operator: progress.json, log lines, a bar.

progress.json (api.Progress) is written every FINETUNE_PROGRESS_SECONDS (default 15) and at
the end, through the background uploader, so a slow store never slows training. The same
numbers go to the log; on a terminal a rich progress bar shows them too.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from finetune_core.api import Progress
from finetune_core.clock import timestamp

log = logging.getLogger(__name__)

PROGRESS_SECONDS_ENV = "FINETUNE_PROGRESS_SECONDS"
DEFAULT_PROGRESS_SECONDS = 15.0


def progress_interval() -> float:
    """Seconds between progress writes: the environment's value, at most 30 s."""
    value = os.environ.get(PROGRESS_SECONDS_ENV)
    seconds = float(value) if value else DEFAULT_PROGRESS_SECONDS
    return min(max(seconds, 0.1), 30.0)


@dataclass(frozen=True)
class Throughput:
    """What this process measured since it started training (resumed runs included)."""

    start_step: int
    start_tokens: int
    start_time: float

    def tokens_per_second(self, tokens: int, now: float) -> float | None:
        elapsed = now - self.start_time
        return (tokens - self.start_tokens) / elapsed if elapsed > 0 and tokens else None

    def eta_seconds(self, step: int, total: int, now: float) -> float | None:
        done = step - self.start_step
        if done <= 0:
            return None
        return max(total - step, 0) * (now - self.start_time) / done


def snapshot(
    state: TrainerState, throughput: Throughput, latest: dict[str, float], now: float
) -> Progress:
    """progress.json's content from the trainer's state and the latest logged values."""
    tokens = int(state.num_input_tokens_seen or 0)
    speed = throughput.tokens_per_second(tokens, now)
    eta = throughput.eta_seconds(state.global_step, state.max_steps, now)
    return Progress(
        step=state.global_step,
        total_steps=state.max_steps,
        epoch=round(state.epoch or 0.0, 4),
        loss=latest.get("loss"),
        learning_rate=latest.get("learning_rate"),
        tokens_per_second=round(speed, 1) if speed is not None else None,
        eta_seconds=round(eta, 1) if eta is not None else None,
        updated_at=timestamp(),
    )


class ProgressReporter(TrainerCallback):
    """Publishes progress (see the module's docstring) through `publish(progress_wire)`."""

    def __init__(self, publish: Callable[[dict[str, Any]], None], interval: float):
        self.publish = publish
        self.interval = interval
        self.latest: dict[str, float] = {}
        self.throughput: Throughput | None = None
        self.last_published = 0.0
        self.bar: RichProgress | None = None
        self.task: Any = None
        self.eval_seconds = 0.0  # evaluations during training: not training throughput

    def _training_clock(self) -> float:
        return time.monotonic() - self.eval_seconds

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.throughput = Throughput(
            state.global_step, int(state.num_input_tokens_seen or 0), self._training_clock()
        )
        if sys.stderr.isatty():
            self.bar = RichProgress(
                TextColumn("training"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TimeRemainingColumn(),
                transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task(
                "train", total=state.max_steps, completed=state.global_step, loss="-"
            )
        self._report(state)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        logs = logs or {}
        self.eval_seconds += float(logs.get("eval_runtime", 0.0))
        if "eval_loss" in logs:
            log.info(
                "step %d: eval loss %.4f",
                state.global_step,
                logs["eval_loss"],
                extra={"step": state.global_step, "evalLoss": logs["eval_loss"]},
            )
        if "loss" not in logs:
            return
        self.latest = {key: float(logs[key]) for key in ("loss", "learning_rate") if key in logs}
        if self.bar is not None:
            self.bar.update(self.task, completed=state.global_step, loss=f"{logs['loss']:.3f}")
        self.maybe_report(state)

    def on_substep_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.maybe_report(state)  # long gradient accumulation: report between steps too

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
        self._report(state)

    def maybe_report(self, state: TrainerState) -> None:
        if time.monotonic() - self.last_published >= self.interval:
            self._report(state)

    def _report(self, state: TrainerState) -> None:
        assert self.throughput is not None, "on_train_begin comes first"
        progress = snapshot(state, self.throughput, self.latest, self._training_clock())
        self.last_published = time.monotonic()
        log.info(
            "step %d/%d epoch %.2f loss %s lr %s %s tokens/s eta %s",
            progress.step,
            progress.total_steps,
            progress.epoch or 0.0,
            _number(progress.loss, ".4f"),
            _number(progress.learning_rate, ".2e"),
            _number(progress.tokens_per_second, ".0f"),
            _duration(progress.eta_seconds),
            extra={"progress": progress.to_wire()},
        )
        self.publish(progress.to_wire())


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
