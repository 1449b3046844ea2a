"""Helpers for running `finetune run|runs|show` as real processes on copies of the quickstart."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import DEMO_DATASET, REPO
from tests.support.cli import finetune as run_finetune

QUICKSTART = REPO / "manifests" / "examples" / "quickstart.yaml"
QUICKSTART_SLA: list[dict[str, Any]] = yaml.safe_load(QUICKSTART.read_text())["spec"]["benchmark"][
    "sla"
]
# Wide enough that rich never wraps or truncates a table row.
TERMINAL = {"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
RUN_TIMEOUT = 1500
# The tests check the pipeline, not this machine's speed: a limit a loaded CI runner meets.
LIMIT_SECONDS = 600.0
STEPS = 4


def write_manifest(directory: Path, edit: Callable[[dict[str, Any]], None] | None = None) -> Path:
    """The quickstart shrunk for tests (4 steps, 10 validation rows, 2 samples, generous
    latency limits), with the dataset's absolute path and any further edits; written as
    directory/job.yaml."""
    doc = yaml.safe_load(QUICKSTART.read_text())
    doc["spec"]["dataset"].update({"uri": str(DEMO_DATASET), "validationSplit": 0.03})
    doc["spec"]["training"].update({"maxSteps": STEPS, "saveSteps": 2})
    doc["spec"]["benchmark"].update({"samples": 2, "warmup": 1})
    for profile in doc["spec"]["benchmark"]["sla"]:
        profile["maxLatencySeconds"] = LIMIT_SECONDS
    if edit is not None:
        edit(doc)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "job.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def finetune_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in {"FINETUNE_STORE", "FINETUNE_S3_ENDPOINT"}
    }
    return {**env, **TERMINAL, **(extra or {})}


def finetune(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = RUN_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """`finetune ARGS...` in `cwd` with the terminal settings above."""
    return run_finetune(*args, cwd=cwd, env=env or finetune_env(), timeout=timeout)


def interrupt_when(
    process: subprocess.Popen[str], ready: Callable[[], bool], deadline_seconds: float
) -> None:
    """SIGINT to the process (only it, as Ctrl-C would reach `finetune run`) once `ready()`."""
    deadline = time.monotonic() + deadline_seconds
    while not ready():
        if process.poll() is not None:
            raise AssertionError(f"finetune run ended (rc {process.returncode}) before the signal")
        if time.monotonic() > deadline:
            process.terminate()  # `finetune run` stops its stage before it exits
            process.wait(timeout=300)
            raise AssertionError(f"not ready after {deadline_seconds} s")
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)


def table_row(output: str, first_cell: str) -> list[str]:
    """The cells of the rich table row that starts with first_cell."""
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("│┃").split("│")]
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no table row starting with {first_cell!r} in:\n{output}")


def labelled(output: str, label: str) -> str:
    """The value on the line that starts with `label` (the run summary's places)."""
    for line in output.splitlines():
        first, _, rest = line.strip().partition(" ")
        if first == label:
            return rest.strip()
    raise AssertionError(f"no line starting with {label!r} in:\n{output}")
