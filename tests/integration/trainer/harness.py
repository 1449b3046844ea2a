"""Running `finetune train` as a pod does: a child process, a run directory in the store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from finetune_core.api import FineTuneJobSpec, RunConfig
from finetune_core.layout import CHECKPOINT_COMPLETE_MARKER, RunPaths
from finetune_core.store import ArtifactStore
from tests.conftest import DEMO_DATASET, TEST_CREDENTIALS

T = TypeVar("T")


def short_demo_dataset(path: Path, rows: int) -> Path:
    """The demo dataset's `rows` shortest conversations, in file order: a CPU trains on
    these in seconds per step."""
    lines = DEMO_DATASET.read_text(encoding="utf-8").splitlines(keepends=True)
    keep = set(sorted(range(len(lines)), key=lambda i: (len(lines[i]), i))[:rows])
    path.write_text("".join(line for i, line in enumerate(lines) if i in keep), encoding="utf-8")
    return path


def small_spec(dataset_uri: str, max_seq_length: int = 128, **training: Any) -> dict[str, Any]:
    """smollm2-135m with short sequences and small batches; `training` overrides."""
    return {
        "model": {"preset": "smollm2-135m", "maxSeqLength": max_seq_length},
        "dataset": {"uri": dataset_uri, "validationSplit": 0.1},
        "lora": {"dropout": 0.0},
        "training": {"batchSize": 2, "learningRate": 1e-3, "warmupSteps": 1, **training},
    }


def write_run(store: ArtifactStore, paths: RunPaths, spec: dict[str, Any]) -> str:
    """config.json as the operator writes it; returns the run URI."""
    resolved = FineTuneJobSpec.model_validate(spec).resolve()
    config = RunConfig(
        namespace=paths.namespace, name=paths.name, generation=paths.generation, spec=resolved
    )
    store.put_json(paths.config, config.to_wire())
    return store.uri(paths.prefix)


def trainer_env(endpoint: str | None = None, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        **TEST_CREDENTIALS,
        "FINETUNE_LOG_FORMAT": "json",
        "FINETUNE_PROGRESS_SECONDS": "1",
        **extra,
    }
    if endpoint:
        env["FINETUNE_S3_ENDPOINT"] = endpoint
    return env


def start_trainer(run_uri: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`finetune train --run URI` in a child process, its stderr (JSON lines) into `log`."""
    with log.open("ab") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "finetune_cli", "train", "--run", run_uri],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
        )


def log_lines(log: Path) -> list[dict[str, Any]]:
    """The JSON log lines (other output, such as library warnings, skipped)."""
    lines = []
    for text in log.read_text(encoding="utf-8", errors="replace").splitlines():
        if text.startswith("{"):
            try:
                lines.append(json.loads(text))
            except json.JSONDecodeError:
                continue
    return lines


def messages(log: Path) -> list[str]:
    return [line["message"] for line in log_lines(log)]


def wait_for(
    condition: Callable[[], T | None],
    timeout: float,
    what: str,
    process: subprocess.Popen[bytes] | None = None,
) -> T:
    """Poll until condition() is truthy; fail naming `what` at the deadline, or at once if
    the process exits meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise AssertionError(f"trainer exited ({process.returncode}) before: {what}")
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for: {what}")


def complete_steps(store: ArtifactStore, paths: RunPaths) -> list[int]:
    marker = "/" + CHECKPOINT_COMPLETE_MARKER
    return sorted(
        int(key[len(paths.checkpoints) + len("/step-") : -len(marker)])
        for key in store.list(paths.checkpoints + "/")
        if key.endswith(marker)
    )


def tiny_run(store: ArtifactStore, paths: RunPaths, work: Path, **training: Any) -> str:
    """A run that exercises the mechanics, not the learning: 20 short conversations cut to
    64 tokens, one per step."""
    dataset = short_demo_dataset(work / "tiny.jsonl", 20)
    store.put_file("datasets/tiny.jsonl", dataset)
    spec = small_spec(store.uri("datasets/tiny.jsonl"), max_seq_length=64, batchSize=1, **training)
    return write_run(store, paths, spec)
