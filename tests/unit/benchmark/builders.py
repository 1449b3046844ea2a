"""Specs and reports for the benchmark's tests, built through the real API models."""

from __future__ import annotations

from typing import Any

from finetune_core.api import BenchmarkReport, FineTuneJobSpec, ProfileResult, ResolvedSpec

SLA = [
    {"name": "question", "maxNewTokens": 200, "maxLatencySeconds": 10},
    {"name": "answer", "maxNewTokens": 50, "maxLatencySeconds": 6},
]


def make_spec(
    sla: list[dict[str, Any]] | None = None,
    percentile: int = 95,
    require_improvement: bool = False,
    alias: str | None = None,
) -> ResolvedSpec:
    return FineTuneJobSpec.model_validate(
        {
            "model": {"preset": "smollm2-135m"},
            "dataset": {"uri": "s3://datasets/devassist.jsonl"},
            "benchmark": {
                "samples": 5,
                "percentile": percentile,
                "sla": SLA if sla is None else sla,
            },
            "promotion": {"requireImprovement": require_improvement, "alias": alias},
        }
    ).resolve()


def profile(name: str, p50: float, p95: float, limit: float, **more: float) -> ProfileResult:
    """A measured profile; p90 and p99 default to p95, max to p99."""
    p90, p99 = more.get("p90", p95), more.get("p99", p95)
    return ProfileResult(
        name=name,
        max_latency_seconds=limit,
        samples=5,
        p50=p50,
        p90=p90,
        p95=p95,
        p99=p99,
        max=more.get("max", p99),
        ttft_p50=0.1,
        itl_p50=0.02,
        tokens_per_second=40.0,
        passed=p95 <= limit,
    )


def make_report(*profiles: ProfileResult, percentile: int = 95) -> BenchmarkReport:
    return BenchmarkReport(
        passed=all(p.passed for p in profiles), percentile=percentile, profiles=list(profiles)
    )
