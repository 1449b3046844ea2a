"""The files the stages leave in a run directory, written as `finetune train` and
`finetune benchmark` write them, for tests that play the stages (the operator's tests play
the pods; the executor-equivalence test runs them as processes through scripted_stage)."""

from __future__ import annotations

import math

from finetune_core.api import (
    BenchmarkReport,
    EvaluationReport,
    Metrics,
    ProfileResult,
    Progress,
    ReviewAnswer,
)
from finetune_core.layout import CHECKPOINT_COMPLETE_MARKER, ErrorReport, RunPaths
from finetune_core.store import ArtifactStore


def progress(store: ArtifactStore, run: RunPaths, step: int, total: int) -> None:
    written = Progress(
        step=step,
        total_steps=total,
        epoch=step / total,
        loss=1.5,
        eta_seconds=12.0,
        updated_at="2026-01-01T00:00:00Z",
    )
    store.put_json(run.progress, written.to_wire())


def trained(store: ArtifactStore, run: RunPaths, eval_loss: float = 1.21) -> None:
    """What `finetune train` leaves: a checkpoint, the adapter and metrics.json."""
    progress(store, run, 4, 4)
    store.put_bytes(f"{run.checkpoint(4)}/adapter_model.safetensors", b"ckpt")
    store.put_bytes(f"{run.checkpoint(4)}/{CHECKPOINT_COMPLETE_MARKER}", b"")
    store.put_json(f"{run.adapter}/adapter_config.json", {"r": 8, "lora_alpha": 16})
    store.put_bytes(f"{run.adapter}/adapter_model.safetensors", b"weights")
    metrics = Metrics(
        train_loss=1.4, eval_loss=eval_loss, base_eval_loss=1.9, perplexity=3.36, train_tokens=4096
    )
    store.put_json(run.metrics, metrics.to_wire())


def _profile(name: str, tokens: int, limit: float, p95: float) -> ProfileResult:
    return ProfileResult(
        name=name,
        max_new_tokens=tokens,
        max_latency_seconds=limit,
        samples=5,
        p50=p95 - 0.5,
        p90=p95 - 0.1,
        p95=p95,
        p99=p95,
        max=p95,
        tokens_per_second=30.0,
        passed=p95 <= limit,
    )


def benchmarked(
    store: ArtifactStore, run: RunPaths, answer_p95: float = 2.5, round: int = 1
) -> None:
    """What `finetune benchmark [--round K]` leaves: report/evaluation.json,
    report/benchmark.json and the HTML report, and the report under report/rounds/<K>/."""
    evaluated(store, run)
    profiles = [_profile("question", 48, 10, 3.5), _profile("answer", 24, 6, answer_p95)]
    report = BenchmarkReport(
        passed=all(p.passed for p in profiles), percentile=95, device="cpu", profiles=profiles
    )
    html = f"<html>report of round {round}</html>".encode()
    store.put_bytes(run.report_html, html, "text/html")
    store.put_json(run.benchmark_report, report.to_wire())
    store.put_bytes(f"{run.round_report(round)}/index.html", html, "text/html")
    store.put_json(run.round_benchmark_report(round), report.to_wire())


def merged(store: ArtifactStore, run: RunPaths) -> None:
    """The merged model the benchmark stage writes for promotion.export: merged."""
    store.put_json(f"{run.merged}/config.json", {"model_type": "llama"})
    store.put_bytes(f"{run.merged}/model.safetensors", b"merged weights")


def failed(store: ArtifactStore, run: RunPaths, stage: str, reason: str, message: str) -> None:
    error = ErrorReport.model_validate({"stage": stage, "reason": reason, "message": message})
    store.put_json(run.error, error.to_wire())


def evaluated(
    store: ArtifactStore,
    run: RunPaths,
    eval_loss: float = 1.25,
    bits_per_byte: float = 0.875,
    dataset: str = "validation split",
) -> None:
    """What `finetune benchmark` leaves beside benchmark.json: report/evaluation.json, with
    one review answer and its scores."""
    answer = ReviewAnswer(
        prompt="What is pip?", reference="The package installer.", base="A tool.", adapter="pip."
    )
    report = EvaluationReport(
        dataset=dataset,
        eval_loss=eval_loss,
        perplexity=math.exp(eval_loss),
        bits_per_byte=bits_per_byte,
        base_bleu=1.5,
        adapter_bleu=6.25,
        base_rouge_l=0.125,
        adapter_rouge_l=0.25,
        answers=[answer],
    )
    store.put_json(run.evaluation, report.to_wire())
