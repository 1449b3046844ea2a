"""`finetune run --rebenchmark`, the cost fields and retention, carried out locally: the
executor runs scripted stages (tests.support.scripted_stage) as child processes."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from finetune_cli.local.executor import rebenchmark_run, run_manifest
from finetune_cli.main import app
from finetune_core.lifecycle import StageName
from finetune_core.runs import find_runs, latest_run
from finetune_core.store import LocalStore
from tests.conftest import REPO
from tests.support.manifests import small_job

NAME = "local"
NAMESPACE = "ml"


def scripted(scenario: str) -> Any:
    def command(stage: StageName, run_uri: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "tests.support.scripted_stage",
            scenario,
            stage,
            "--run",
            run_uri,
        ]

    return command


@pytest.fixture(autouse=True)
def stage_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The scripted stages import tests.support (and the tree the caller's path names)."""
    inherited = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), inherited])))
    for variable in ("FINETUNE_GPU_HOUR_PRICE", "FINETUNE_CURRENCY", "FINETUNE_KEEP_GENERATIONS"):
        monkeypatch.delenv(variable, raising=False)


def manifest(directory: Path, **spec: Any) -> Path:
    (directory / "chat.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    job = small_job(NAME, "chat.jsonl", **spec)
    job["metadata"]["namespace"] = NAMESPACE
    path = directory / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def test_a_rejected_run_is_benchmarked_again_without_retraining(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FINETUNE_GPU_HOUR_PRICE", "2.5")
    monkeypatch.setenv("FINETUNE_CURRENCY", "EUR")
    path, store = manifest(tmp_path, resources={"gpus": 1}), LocalStore(tmp_path / "store")
    assert run_manifest(path, store.uri(), None, scripted("slow-then-fast")) == 2  # Rejected
    first = latest_run(store, NAMESPACE, NAME)
    assert first is not None and first.status.phase == "Rejected"
    trained_at = store.etag(first.paths.metrics)

    assert rebenchmark_run(path, store.uri(), None, scripted("slow-then-fast")) == 0
    snapshot = latest_run(store, NAMESPACE, NAME)
    assert snapshot is not None
    status, run = snapshot.status, snapshot.paths
    assert (run.generation, status.phase, status.benchmark_round) == (1, "Promoted", 2)
    assert status.rebenchmark_request == "1"  # as the annotation would say
    assert store.etag(run.metrics) == trained_at  # not retrained
    assert store.get_json(run.round_benchmark_report(1))["profiles"][1]["p95"] == 7.25
    assert store.get_json(run.round_benchmark_report(2))["profiles"][1]["p95"] == 2.5
    assert store.exists(run.log("benchmark-r2"))
    cost = status.cost
    assert cost is not None
    assert (cost.currency, cost.price_per_gpu_hour) == ("EUR", 2.5)
    assert set(cost.stages) == {"local-g1-train", "local-g1-bench", "local-g1-bench-r2"}
    assert cost.gpu_hours == pytest.approx(sum(cost.stages.values()), abs=1e-4)
    assert cost.estimated_cost == round(cost.gpu_hours * 2.5, 2)

    shown = CliRunner().invoke(app, ["show", f"{NAMESPACE}/{NAME}", "--store", store.uri()])
    assert "benchmark round  2" in " ".join(shown.output.split("\n"))
    assert "GPU-hours" in shown.output and "EUR" in shown.output

    # A promoted run is not re-gated (through the command line, as a person types it).
    refused = CliRunner().invoke(app, ["run", "--rebenchmark", str(path), "--store", store.uri()])
    assert refused.exit_code == 1
    assert "a promoted run is not re-gated" in " ".join(refused.output.split())
    assert latest_run(store, NAMESPACE, NAME).status.benchmark_round == 2  # type: ignore[union-attr]


def test_a_cpu_run_costs_no_gpu_hours_and_a_missing_run_is_named(tmp_path: Path) -> None:
    path, store = manifest(tmp_path), LocalStore(tmp_path / "store")
    assert rebenchmark_run(path, store.uri(), None, scripted("passes")) == 1  # nothing to redo
    assert run_manifest(path, store.uri(), None, scripted("passes")) == 0
    snapshot = latest_run(store, NAMESPACE, NAME)
    assert snapshot is not None and snapshot.status.cost is not None
    assert snapshot.status.cost.gpu_hours == 0.0
    assert snapshot.status.cost.estimated_cost == 0.0


def test_settled_runs_keep_only_the_newest_superseded_generations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FINETUNE_KEEP_GENERATIONS", "1")
    store = LocalStore(tmp_path / "store")
    # Generation 1 is promoted; 2, 3 and 4 are rejected.
    assert run_manifest(manifest(tmp_path), store.uri(), None, scripted("passes")) == 0
    for rank in (8, 4, 2):
        path = manifest(tmp_path, lora={"r": rank})
        assert run_manifest(path, store.uri(), None, scripted("slow-answer")) == 2
    kept = [run.generation for run in find_runs(store, NAMESPACE, NAME)]
    assert kept == [1, 3, 4]  # the promoted one, the newest superseded one, the current one
    assert not any(store.list(f"runs/{NAMESPACE}/{NAME}/g2/"))


def test_an_interrupted_rebenchmark_resumes_its_round(tmp_path: Path) -> None:
    """A re-benchmark stopped half-way (Ctrl-C) is taken up again by running the manifest:
    the same round, not round 1 again."""
    path, store = manifest(tmp_path), LocalStore(tmp_path / "store")
    assert run_manifest(path, store.uri(), None, scripted("slow-then-fast")) == 2
    snapshot = latest_run(store, NAMESPACE, NAME)
    assert snapshot is not None
    # What an interrupted round 2 leaves: the status says Benchmarking in round 2 (as
    # `lifecycle.interrupted` records it), and round 2 wrote no report.
    interrupted = snapshot.status.model_copy(
        update={"phase": "Benchmarking", "benchmark_round": 2, "rebenchmark_request": "1"}
    )
    store.put_json(snapshot.paths.status, interrupted.to_wire())
    assert run_manifest(path, store.uri(), None, scripted("slow-then-fast")) == 0
    resumed = latest_run(store, NAMESPACE, NAME)
    assert resumed is not None
    assert (resumed.status.phase, resumed.status.benchmark_round) == ("Promoted", 2)
    assert store.exists(snapshot.paths.round_benchmark_report(2))
