"""Which generation `finetune run` runs, and how runs are read back from a store: no model."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from finetune_cli.local.generations import choose_generation
from finetune_cli.local.manifest import LocalJob, load_job
from finetune_core.api import FineTuneJobStatus, Metrics, Progress, RunConfig
from finetune_core.layout import CHECKPOINT_COMPLETE_MARKER, RunPaths
from finetune_core.run_files import last_checkpoint
from finetune_core.runs import (
    RunSnapshot,
    UnknownRun,
    latest_run,
    load_run,
    newest_of,
    save_status,
)
from finetune_core.store import LocalStore, S3Store
from tests.integration.pipeline.runner import finetune, finetune_env, table_row, write_manifest

NOW = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)


def job(tmp_path: Path, lr: float = 2e-4) -> LocalJob:
    def edit(doc: dict) -> None:
        doc["spec"]["training"]["learningRate"] = lr

    return load_job(write_manifest(tmp_path, edit))


def snapshot(
    job: LocalJob, generation: int, phase: str | None, sha: str | None = None
) -> RunSnapshot:
    config = RunConfig(namespace=job.namespace, name=job.name, generation=generation, spec=job.spec)
    metrics = Metrics(dataset_sha256=sha) if sha else None
    status = FineTuneJobStatus(phase=phase, observed_generation=generation, metrics=metrics)
    return RunSnapshot(RunPaths(job.namespace, job.name, generation), config, status)


def test_load_job_resolves_the_dataset_against_the_manifest(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "chats.jsonl").write_text('{"messages": []}\n')

    def edit(doc: dict) -> None:
        doc["spec"]["dataset"]["uri"] = "data/chats.jsonl"

    loaded = load_job(write_manifest(tmp_path, edit))
    assert loaded.namespace == "local"
    assert loaded.name == "quickstart"
    assert loaded.spec.dataset.uri == f"file://{tmp_path.resolve()}/data/chats.jsonl"
    assert loaded.spec.model_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert loaded.dataset_sha256 is not None and len(loaded.dataset_sha256) == 64


def test_first_run_starts_generation_one(tmp_path: Path) -> None:
    plan = choose_generation(job(tmp_path).spec, None, None)
    assert (plan.generation, plan.action) == (1, "start")


@pytest.mark.parametrize("phase", ["Pending", "Training", "Benchmarking", None])
def test_same_spec_unfinished_resumes_the_same_generation(
    tmp_path: Path, phase: str | None
) -> None:
    current = job(tmp_path)
    plan = choose_generation(current.spec, snapshot(current, 3, phase), current.dataset_sha256)
    assert (plan.generation, plan.action) == (3, "resume")
    assert "resuming generation 3" in plan.why


def test_same_spec_failed_retries_the_same_generation(tmp_path: Path) -> None:
    current = job(tmp_path)
    plan = choose_generation(current.spec, snapshot(current, 2, "Failed"), None)
    assert (plan.generation, plan.action) == (2, "resume")
    assert "retrying" in plan.why


@pytest.mark.parametrize("phase", ["Promoted", "Rejected", "AwaitingApproval"])
def test_same_spec_settled_is_reported_not_rerun(tmp_path: Path, phase: str) -> None:
    current = job(tmp_path)
    plan = choose_generation(
        current.spec, snapshot(current, 2, phase, current.dataset_sha256), None
    )
    assert (plan.generation, plan.action) == (2, "report")
    assert phase in plan.why and "change the spec" in plan.why


def test_changed_spec_starts_the_next_generation(tmp_path: Path) -> None:
    before, after = job(tmp_path / "a", lr=2e-4), job(tmp_path / "b", lr=1e-4)
    plan = choose_generation(after.spec, snapshot(before, 4, "Promoted"), after.dataset_sha256)
    assert (plan.generation, plan.action) == (5, "start")
    assert "spec changed" in plan.why


def test_dataset_edited_in_place_starts_the_next_generation(tmp_path: Path) -> None:
    current = job(tmp_path)
    plan = choose_generation(
        current.spec, snapshot(current, 1, "Promoted", "0" * 64), current.dataset_sha256
    )
    assert (plan.generation, plan.action) == (2, "start")
    assert "dataset changed" in plan.why


def test_runs_without_status_json_get_a_phase_from_their_files(
    tmp_path: Path, s3_store: S3Store, s3_env: dict[str, str]
) -> None:
    """A bucket written by the operator's pods has no status.json: `finetune runs` infers it."""
    current = job(tmp_path)
    run = RunPaths("ml", "agent1", 3)
    config = RunConfig(
        namespace="ml", name="agent1", generation=3, spec=current.spec, created_at=NOW
    )
    s3_store.put_json(run.config, config.to_wire())
    s3_store.put_json(run.progress, Progress(step=7, total_steps=40, loss=1.5).to_wire())

    loaded = load_run(s3_store, run)
    assert loaded is not None and loaded.status.phase == "Training"
    assert loaded.status.progress is not None and loaded.status.progress.step == 7

    result = finetune(
        "runs",
        "--store",
        s3_env["FINETUNE_STORE"],
        "--s3-endpoint",
        s3_env["FINETUNE_S3_ENDPOINT"],
        cwd=tmp_path,
        env=finetune_env(dict(s3_env)),
        timeout=60,
    )
    assert result.returncode == 0, result.stdout
    row = table_row(result.stdout, "agent1")
    assert row[1:5] == ["ml", "3", "Training", "smollm2-135m"]


def test_newest_generation_and_checkpoint(tmp_path: Path, local_store: LocalStore) -> None:
    current = job(tmp_path)
    for generation in (1, 2):
        run = RunPaths("local", "quickstart", generation)
        config = RunConfig(
            namespace="local", name="quickstart", generation=generation, spec=current.spec
        )
        local_store.put_json(run.config, config.to_wire())
    save_status(
        local_store,
        run,
        FineTuneJobStatus(observed_generation=2, phase="Training", message="training"),
    )
    for step in (2, 4):
        local_store.put_bytes(f"{run.checkpoint(step)}/adapter_model.safetensors", b"weights")
    local_store.put_bytes(f"{run.checkpoint(2)}/{CHECKPOINT_COMPLETE_MARKER}", b"")

    latest = latest_run(local_store, "local", "quickstart")
    assert latest is not None and latest.paths.generation == 2
    assert latest.status.phase == "Training"
    assert last_checkpoint(local_store, run) == run.checkpoint(2)  # step-4 is incomplete
    assert newest_of(local_store, "quickstart").paths == run
    assert newest_of(local_store, "local/quickstart").paths == run
    with pytest.raises(UnknownRun, match="no run named 'other/quickstart'"):
        newest_of(local_store, "other/quickstart")
