"""`finetune benchmark` on a real trained adapter (smollm2-135m on the CPU): a loose SLA
passes, an impossible one is rejected, both with complete reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from finetune_core.api import BenchmarkReport, Metrics
from finetune_core.layout import RunPaths
from finetune_core.store import ArtifactStore, LocalStore, S3Store
from finetune_trainer.benchmark import main
from tests.integration.benchmark.conftest import TrainedRun, finetune, run_spec
from tests.unit.benchmark.pages import assert_self_contained

pytestmark = pytest.mark.slow

RUN = RunPaths("ml", "agent", 2)


def samples_file(store: ArtifactStore, run: RunPaths) -> dict[str, dict[str, Any]]:
    """report/samples.json by profile name."""
    recorded = json.loads(store.get_bytes(f"{run.report}/samples.json"))
    return {profile["name"]: profile for profile in recorded["profiles"]}


def progress_lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_a_loose_sla_passes_with_a_complete_report(
    trained: TrainedRun, local_store: LocalStore, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        json.dumps({"messages": [{"role": "user", "content": "Name a Python web framework."}]})
        + "\n"
        + json.dumps({"messages": [{"role": "user", "content": "What does pip do?"}]})
        + "\n"
    )
    sla = [
        {"name": "question", "maxNewTokens": 8, "maxLatencySeconds": 600},
        {"name": "answer", "maxNewTokens": 5, "maxLatencySeconds": 600, "prompts": str(prompts)},
    ]
    uri = trained.copy_to(local_store, RUN, run_spec(str(trained.dataset), sla))
    stale = {"stage": "benchmark", "reason": "BenchmarkFailed", "message": "an earlier attempt"}
    local_store.put_json(RUN.error, stale)

    result = finetune("benchmark", "--run", uri)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not local_store.exists(RUN.error)  # the retry's success replaces the failure

    report = BenchmarkReport.model_validate(local_store.get_json(RUN.benchmark_report))
    assert report.passed and report.reasons == []
    assert report.percentile == 95
    assert report.device and report.device.startswith("cpu: ")
    assert report.device.endswith("; trained with transformers")  # metrics.json's backend
    assert (report.backend, report.dtype, report.merged_adapter) == (
        "transformers",
        "float32",
        False,
    )
    assert {"torch", "transformers", "peft"} <= set(report.versions)
    metrics = Metrics.model_validate(local_store.get_json(RUN.metrics))
    assert metrics.eval_loss is not None and metrics.base_eval_loss is not None
    assert (report.eval_loss, report.base_eval_loss) == (metrics.eval_loss, metrics.base_eval_loss)
    assert report.perplexity == metrics.perplexity

    assert [p.name for p in report.profiles] == ["question", "answer"]
    recorded = samples_file(local_store, RUN)
    lines = progress_lines(result.stdout)
    for profile, wanted in zip(report.profiles, sla, strict=True):
        assert profile.passed
        assert profile.samples == 3
        assert profile.max_new_tokens == wanted["maxNewTokens"]
        assert profile.max_latency_seconds == 600
        assert profile.p50 is not None and profile.p95 is not None and profile.max is not None
        assert profile.p50 <= profile.p95 <= profile.max
        assert profile.ttft_p50 is not None and profile.ttft_p50 < profile.p50
        assert profile.tokens_per_second is not None and profile.tokens_per_second > 0

        # Warm-ups ran (one line each on stdout) but only the measured samples are recorded.
        ran = [line for line in lines if line["profile"] == profile.name]
        assert [line.get("warmup") for line in ran if "warmup" in line] == [1]
        assert [line["sample"] for line in ran if "sample" in line] == [1, 2, 3]
        assert all(line["tokens"] == wanted["maxNewTokens"] for line in ran)
        samples = recorded[profile.name]["samples"]
        assert recorded[profile.name]["warmup"] == 1
        assert len(samples) == profile.samples == 3
        assert [round(s["latency"], 4) for s in samples] == [
            line["latency"] for line in ran if "sample" in line
        ]
        assert max(s["latency"] for s in samples) == profile.max
        for sample in samples:
            assert sample["tokens"] == wanted["maxNewTokens"]
            assert 0 < sample["ttft"] < sample["latency"]

    # The answer profile used its prompts file, cycled; the question profile the validation split.
    answer_prompts = [s["prompt"] for s in recorded["answer"]["samples"]]
    assert [p.rsplit(" ", 1)[-1] for p in answer_prompts] == ["1", "2", "1"]
    assert all(str(prompts) in p for p in answer_prompts)
    assert all("validation row" in s["prompt"] for s in recorded["question"]["samples"])

    page = local_store.get_bytes(RUN.report_html).decode()
    references = assert_self_contained(page)
    assert len(references.images) == 3  # two histograms and the trainer's loss curve
    assert "PASSED" in page and "limit 600 s" in page
    assert metrics.dataset_sha256 and metrics.dataset_sha256 in page


def test_an_impossible_sla_is_rejected_with_a_complete_report(
    trained: TrainedRun, s3_store: S3Store, capsys: pytest.CaptureFixture[str]
) -> None:
    s3_store.put_file("datasets/devtopics.jsonl", trained.dataset)
    sla = [{"name": "answer", "maxNewTokens": 4, "maxLatencySeconds": 0.001}]
    spec = run_spec(s3_store.uri("datasets/devtopics.jsonl"), sla, percentile=50, mergeAdapter=True)
    uri = trained.copy_to(s3_store, RUN, spec)

    assert main(uri, round=2) == 0  # measured: a verdict, not a failure (a re-benchmark)
    assert not s3_store.exists(RUN.error)
    report = BenchmarkReport.model_validate(s3_store.get_json(RUN.benchmark_report))
    assert not report.passed
    (profile,) = report.profiles
    assert profile.passed is False and profile.samples == 3
    assert profile.p50 is not None and profile.p50 > 0.001
    # Three samples are too few for an interval; the p50 is far above the limit: the margin.
    assert profile.lower_bound is None and profile.verdict_basis == "margin"
    assert report.reasons == [f"profile answer: p50 {profile.p50:.3g} s > limit 0.001 s (margin)"]
    assert report.merged_adapter is True

    lines = progress_lines(capsys.readouterr().out)
    assert sum("warmup" in line for line in lines) == 1
    assert sum("sample" in line for line in lines) == 3
    assert all(line["tokens"] == 4 for line in lines)
    assert len(samples_file(s3_store, RUN)["answer"]["samples"]) == 3

    assert set(s3_store.list(RUN.report)) >= {
        RUN.benchmark_report,
        RUN.report_html,
        f"{RUN.report}/samples.json",
        f"{RUN.report}/latency-answer.png",
        f"{RUN.report}/loss.png",
    }
    # The round keeps its own copy beside the latest (report/), benchmark.json last.
    kept = RUN.round_report(2)
    assert set(s3_store.list(kept)) == {
        RUN.round_benchmark_report(2),
        f"{kept}/index.html",
        f"{kept}/samples.json",
        f"{kept}/latency-answer.png",
    }
    assert s3_store.get_json(RUN.round_benchmark_report(2)) == report.to_wire()
    assert s3_store.get_bytes(f"{kept}/index.html") == s3_store.get_bytes(RUN.report_html)
    page = s3_store.get_bytes(RUN.report_html).decode()
    assert_self_contained(page)
    assert "REJECTED" in page and "SlaMissed" in page
    assert "limit 0.001 s" in page
    assert "(merged)" in page
