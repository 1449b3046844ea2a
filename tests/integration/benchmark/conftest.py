"""A small real adapter, trained once per module by `finetune train` (smollm2-135m, 1 step),
and runs that benchmark it under different SLAs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from finetune_core.api import FineTuneJobSpec, RunConfig
from finetune_core.layout import RunPaths
from finetune_core.store import ArtifactStore, LocalStore

TRAINED = RunPaths("ml", "trained", 1)
TOPICS = [
    "lists", "dicts", "tuples", "sets", "generators", "decorators",
    "context managers", "f-strings", "type hints", "dataclasses", "pathlib", "asyncio",
]  # fmt: skip


def conversation(topic: str) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "system", "content": "You are a concise assistant for developers."},
            {"role": "user", "content": f"What are Python {topic} good for?"},
            {"role": "assistant", "content": f"Python {topic} make code clearer; use them "
                                             "when they fit the shape of your data."},
        ]
    }  # fmt: skip


def run_spec(dataset: str, sla: list[dict[str, Any]], **benchmark: Any) -> dict[str, Any]:
    """A FineTuneJob spec small enough for a CPU: one optimiser step, few short samples."""
    return {
        "model": {"preset": "smollm2-135m"},
        "dataset": {"uri": dataset, "validationSplit": 0.2},
        "training": {"maxSteps": 1, "batchSize": 2},
        "benchmark": {"samples": 3, "warmup": 1, "sla": sla, **benchmark},
    }


def finetune(*args: str) -> subprocess.CompletedProcess[str]:
    """The `finetune` command as a pod runs it, in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "finetune_cli", *args],
        capture_output=True,
        text=True,
        timeout=900,
        env=os.environ.copy(),
        check=False,
    )


@dataclass(frozen=True)
class TrainedRun:
    """A run directory on the local store that `finetune train` completed."""

    store: LocalStore
    dataset: Path

    def copy_to(self, store: ArtifactStore, run: RunPaths, spec: dict[str, Any]) -> str:
        """A new run holding the trained run's adapter, metrics and loss report, configured
        with `spec`; returns its URI."""
        source = self.store.root / TRAINED.prefix
        for part in ("adapter", "report"):
            store.upload_dir(f"{run.prefix}/{part}", source / part)
        store.put_file(run.metrics, source / "metrics.json")
        resolved = FineTuneJobSpec.model_validate(spec).resolve()
        config = RunConfig(
            namespace=run.namespace, name=run.name, generation=run.generation, spec=resolved
        )
        store.put_json(run.config, config.to_wire())
        return store.uri(run.prefix)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    directory = tmp_path_factory.mktemp("trained")
    dataset = directory / "devtopics.jsonl"
    dataset.write_text("".join(json.dumps(conversation(t)) + "\n" for t in TOPICS))
    store = LocalStore(directory / "store")
    sla = [{"name": "answer", "maxNewTokens": 4, "maxLatencySeconds": 60}]
    spec = FineTuneJobSpec.model_validate(run_spec(str(dataset), sla)).resolve()
    config = RunConfig(namespace="ml", name="trained", generation=1, spec=spec)
    store.put_json(TRAINED.config, config.to_wire())
    result = finetune("train", "--run", store.uri(TRAINED.prefix))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert store.exists(f"{TRAINED.adapter}/adapter_config.json")
    return TrainedRun(store, dataset)
