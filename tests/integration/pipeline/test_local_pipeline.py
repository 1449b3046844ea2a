"""`finetune run` end to end: real processes, the real SmolLM2-135M, a few training steps.

One promoted run is shared by the assertions on its tree, its summary, `runs` and `show`;
the rejected, interrupted and S3 runs each train their own (4-6 steps, 2 samples).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from pydantic import BaseModel

from finetune_cli.local.executor import approve_run
from finetune_core.api import (
    BenchmarkReport,
    EvaluationReport,
    EvaluationSummary,
    FineTuneJobStatus,
    Metrics,
    Progress,
)
from finetune_core.gate import BASIS_WORDS
from finetune_core.layout import CHECKPOINT_COMPLETE_MARKER, CurrentAlias, RunPaths
from finetune_core.store import ArtifactStore, LocalStore, S3Store
from tests.integration.pipeline.runner import (
    LIMIT_SECONDS,
    QUICKSTART_SLA,
    STEPS,
    finetune,
    finetune_env,
    interrupt_when,
    labelled,
    table_row,
    write_manifest,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

M = TypeVar("M", bound=BaseModel)
RUN = RunPaths("local", "quickstart", 1)
ALIAS = "smollm2-135m"
MODEL = f"local/{ALIAS}"  # where the alias lives: the namespace, then the alias


@dataclass(frozen=True)
class Finished:
    directory: Path
    manifest: Path
    store: LocalStore
    result: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def promoted(tmp_path_factory: pytest.TempPathFactory) -> Finished:
    directory = tmp_path_factory.mktemp("promoted")
    manifest = write_manifest(directory)
    result = finetune("run", str(manifest), cwd=directory)  # the default store: ./.finetune
    return Finished(directory, manifest, LocalStore(directory / ".finetune"), result)


def read(store: ArtifactStore, key: str, model: type[M]) -> M:
    return model.model_validate(store.get_json(key))


def test_promoted_run_writes_the_contract_tree(promoted: Finished) -> None:
    assert promoted.result.returncode == 0, promoted.result.stdout
    store = promoted.store
    keys = set(store.list(""))
    for key in (
        RUN.config,
        RUN.progress,
        RUN.metrics,
        RUN.status,
        RUN.benchmark_report,
        RUN.report_html,
        f"{RUN.adapter}/adapter_config.json",
        f"{RUN.checkpoint(STEPS)}/{CHECKPOINT_COMPLETE_MARKER}",
        f"models/{MODEL}/{RUN.version}/adapter/adapter_config.json",
        f"models/{MODEL}/current.json",
    ):
        assert key in keys, key
    assert RUN.error not in keys
    progress = read(store, RUN.progress, Progress)
    assert (progress.step, progress.total_steps) == (STEPS, STEPS)
    alias = read(store, f"models/{MODEL}/current.json", CurrentAlias)
    assert alias.version == RUN.version
    assert alias.uri == store.uri(f"models/{MODEL}/{RUN.version}")

    status = read(store, RUN.status, FineTuneJobStatus)
    assert status.phase == "Promoted" and status.sla == "Passed"
    assert status.promoted_model == alias.uri
    conditions = {c.type: (c.status, c.observed_generation) for c in status.conditions}
    assert conditions == {
        "Ready": ("True", 1),
        "Reconciling": ("False", 1),
        "Stalled": ("False", 1),
    }
    assert status.artifacts is not None
    assert status.artifacts.adapter == store.uri(RUN.adapter)
    assert status.artifacts.report == store.uri(RUN.report_html)
    assert status.metrics == read(store, RUN.metrics, Metrics)

    # The benchmark stage's held-out evaluation and review answers, summed up in the status.
    evaluation = read(store, RUN.evaluation, EvaluationReport)
    assert evaluation.dataset == "validation split"
    assert evaluation.bits_per_byte is not None and evaluation.bits_per_byte > 0
    assert len(evaluation.answers) >= 1
    assert status.evaluation == EvaluationSummary.of(evaluation)
    assert status.evaluation.adapter_bleu is not None
    assert f"models/{MODEL}/{RUN.version}/report/evaluation.json" in keys
    assert 'class="review"' in store.get_bytes(RUN.report_html).decode()


def test_summary_shows_the_measured_sla_table_and_metrics(promoted: Finished) -> None:
    output = promoted.result.stdout
    report = read(promoted.store, RUN.benchmark_report, BenchmarkReport)
    assert [p.name for p in report.profiles] == ["question", "answer"]
    tokens = {p["name"]: p["maxNewTokens"] for p in QUICKSTART_SLA}
    for profile in report.profiles:
        p95 = f"{profile.p95:.2f} s"
        if profile.lower_bound is not None and profile.upper_bound is not None:
            p95 += f" [{profile.lower_bound:.2f}, {profile.upper_bound:.2f}]"
        assert profile.verdict_basis is not None and profile.warmups is not None
        assert table_row(output, profile.name) == [
            profile.name,
            str(tokens[profile.name]),
            f"{profile.p50:.2f} s",
            p95,
            f"{LIMIT_SECONDS:.2f} s",
            f"{profile.samples} (+{profile.warmups} warm-up)",
            f"{profile.tokens_per_second:.1f}",
            f"pass ({BASIS_WORDS[profile.verdict_basis]})",
        ]
    metrics = read(promoted.store, RUN.metrics, Metrics)
    assert metrics.base_eval_loss is not None
    assert table_row(output, "eval loss")[1] == (
        f"{metrics.eval_loss:.4f} (base {metrics.base_eval_loss:.4f})"
    )
    assert table_row(output, "perplexity")[1] == (
        f"{metrics.perplexity:.2f} (base {math.exp(metrics.base_eval_loss):.2f})"
    )
    evaluation = read(promoted.store, RUN.evaluation, EvaluationReport)
    assert table_row(output, "bits per byte")[1] == f"{evaluation.bits_per_byte:.4f}"
    assert table_row(output, "ROUGE-L")[1] == (
        f"{evaluation.adapter_rouge_l:.3f} (base {evaluation.base_rouge_l:.3f})"
    )
    assert "local/quickstart generation 1: Promoted" in output
    assert labelled(output, "promoted") == promoted.store.uri(f"models/{MODEL}/{RUN.version}")
    assert labelled(output, "report") == promoted.store.uri(RUN.report_html)
    assert labelled(output, "adapter") == promoted.store.uri(RUN.adapter)


def test_runs_and_show_read_the_same_status(promoted: Finished) -> None:
    metrics = read(promoted.store, RUN.metrics, Metrics)
    listing = finetune("runs", cwd=promoted.directory, timeout=60)
    assert listing.returncode == 0, listing.stdout
    row = table_row(listing.stdout, "quickstart")
    assert row[:7] == [
        "quickstart",
        "local",
        "1",
        "Promoted",
        ALIAS,
        f"{metrics.eval_loss:.4f}",
        "Passed",
    ]

    shown = finetune("show", "local/quickstart", cwd=promoted.directory, timeout=60)
    assert shown.returncode == 0, shown.stdout
    for profile in ("question", "answer"):
        assert table_row(shown.stdout, profile) == table_row(promoted.result.stdout, profile)
    assert labelled(shown.stdout, "report") == promoted.store.uri(RUN.report_html)


def test_the_same_manifest_again_reports_instead_of_retraining(promoted: Finished) -> None:
    before = set(promoted.store.list("runs/"))
    again = finetune("run", str(promoted.manifest), cwd=promoted.directory, timeout=120)
    assert again.returncode == 0, again.stdout
    assert "generation 1 already ran this spec (Promoted)" in again.stdout
    assert table_row(again.stdout, "question")[-1].startswith("pass")
    assert set(promoted.store.list("runs/")) == before


def test_an_impossible_sla_is_rejected_as_the_next_generation(
    promoted: Finished, tmp_path: Path
) -> None:
    """The same job with a changed spec is generation 2; the gate rejects it and the
    promoted generation 1 stays the current model."""
    shutil.copytree(promoted.store.root, tmp_path / ".finetune")
    store = LocalStore(tmp_path / ".finetune")

    def impossible(doc: dict) -> None:
        doc["spec"]["benchmark"]["sla"][1]["maxLatencySeconds"] = 0.001

    manifest = write_manifest(tmp_path, impossible)
    result = finetune("run", str(manifest), cwd=tmp_path)
    assert result.returncode == 2, result.stdout
    run = RunPaths("local", "quickstart", 2)
    report = read(store, run.benchmark_report, BenchmarkReport)
    answer = next(p for p in report.profiles if p.name == "answer")
    assert f"profile answer: p95 {answer.p95:.3g} s > limit 0.001 s" in result.stdout
    assert answer.verdict_basis is not None
    assert table_row(result.stdout, "answer")[4:] == [
        "0.00 s",
        f"{answer.samples} (+{answer.warmups} warm-up)",
        f"{answer.tokens_per_second:.1f}",
        f"FAIL ({BASIS_WORDS[answer.verdict_basis]})",
    ]
    assert table_row(result.stdout, "question")[-1].startswith("pass")
    status = read(store, run.status, FineTuneJobStatus)
    assert (status.phase, status.sla, status.promoted_model) == ("Rejected", "Failed", None)
    assert status.conditions[0].reason == "SlaMissed"
    assert read(store, f"models/{MODEL}/current.json", CurrentAlias).version == RUN.version
    assert not any(store.list(f"models/{MODEL}/{run.version}/"))


def test_interrupted_run_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    steps = STEPS + 2

    def longer(doc: dict) -> None:
        doc["spec"]["training"]["maxSteps"] = steps

    manifest = write_manifest(tmp_path, longer)
    store = LocalStore(tmp_path / "store")
    command = [
        sys.executable,
        "-m",
        "finetune_cli",
        "run",
        str(manifest),
        "--store",
        str(store.root),
    ]
    first = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=finetune_env(),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    marker = f"{RUN.checkpoint(2)}/{CHECKPOINT_COMPLETE_MARKER}"
    interrupt_when(first, lambda: store.exists(marker), deadline_seconds=600)
    output, _ = first.communicate(timeout=300)
    assert first.returncode == 130, output
    assert "train interrupted at step" in output

    status = read(store, RUN.status, FineTuneJobStatus)
    assert status.phase == "Training"
    assert status.conditions[0].reason == "Interrupted"
    assert status.artifacts is not None and status.artifacts.last_checkpoint
    stopped_at = int(status.artifacts.last_checkpoint.rsplit("step-", 1)[1])
    assert 2 <= stopped_at < steps
    assert not store.exists(RUN.metrics)

    second = finetune("run", str(manifest), "--store", str(store.root), cwd=tmp_path)
    assert second.returncode == 0, second.stdout
    assert "resuming generation 1 (Training)" in second.stdout
    assert f"step-{stopped_at}" in store.get_bytes(RUN.log("train")).decode()
    progress = read(store, RUN.progress, Progress)
    assert (progress.step, progress.total_steps) == (steps, steps)
    assert read(store, RUN.status, FineTuneJobStatus).phase == "Promoted"
    assert not any(store.list("runs/local/quickstart/g2/"))


def test_s3_store_gets_the_same_tree_and_manual_promotion_waits_for_approval(
    promoted: Finished, tmp_path: Path, s3_env: dict[str, str], s3_store: S3Store
) -> None:
    """With --store s3://... the run writes the tree the local store got; promotion.policy
    manual stops at AwaitingApproval (exit 0) until `approve_run` promotes it."""

    def manual(doc: dict) -> None:
        doc["spec"]["promotion"] = {"policy": "manual"}

    bucket, endpoint = s3_env["FINETUNE_STORE"], s3_env["FINETUNE_S3_ENDPOINT"]
    manifest = write_manifest(tmp_path, manual)
    result = finetune(
        "run",
        str(manifest),
        "--store",
        bucket,
        "--s3-endpoint",
        endpoint,
        cwd=tmp_path,
        env=finetune_env(dict(s3_env)),
    )
    assert result.returncode == 0, result.stdout
    assert "local/quickstart generation 1: AwaitingApproval" in result.stdout
    assert f"finetune approve local/quickstart --store {bucket} --s3-endpoint {endpoint}" in (
        " ".join(result.stdout.split())
    )
    assert not any(s3_store.list("models/"))
    assert not (tmp_path / ".finetune").exists()

    assert approve_run("quickstart", store=bucket, endpoint=endpoint) == 0
    assert set(s3_store.list("")) == set(promoted.store.list(""))
    alias = read(s3_store, f"models/{MODEL}/current.json", CurrentAlias)
    assert alias.uri == f"{bucket}/models/{MODEL}/{RUN.version}"
    status = json.loads(s3_store.get_bytes(RUN.status))
    assert (status["phase"], status["promotedModel"]) == ("Promoted", alias.uri)
    assert status["conditions"][0]["reason"] == "Promoted"
    assert status["message"].startswith("SLA met: ")
    assert status["message"].endswith(f"; generation 1 approved; promoted to {alias.uri}")
    assert status["approvedGeneration"] == 1
