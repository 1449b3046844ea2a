"""The promotion gate: may a run's adapter become the current model?

A pure decision over the benchmark report, the spec, the training metrics and the current
champion, so the operator, the local pipeline and the benchmark itself reach the same verdict.
The SLA verdict is recomputed from the measured percentiles and the spec's limits; the
report's own `passed` flags are not trusted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from finetune_core.api import (
    BenchmarkReport,
    Metrics,
    ProfileResult,
    Reason,
    ResolvedSpec,
    SlaProfile,
)
from finetune_core.layout import CurrentAlias


@dataclass(frozen=True)
class Verdict:
    """The gate's answer. `reason` is CamelCase (a condition reason); `message` is for a
    person and names every failed check with its numbers."""

    passed: bool
    reason: str
    message: str
    problems: tuple[str, ...] = field(default=())


def seconds(value: float) -> str:
    """A latency for a message: 7.41, 6, 0.001."""
    return f"{value:.3g}"


def loss(value: float) -> str:
    return f"{value:.4g}"


def percentile_of(result: ProfileResult, percentile: int) -> float | None:
    """The measured end-to-end latency at the spec's percentile (50, 90, 95 or 99)."""
    value: float | None = getattr(result, f"p{percentile}")
    return _finite(value)


def profile_meets_sla(result: ProfileResult, percentile: int, limit: float) -> bool:
    """One profile's verdict: its chosen latency percentile is within the limit."""
    value = percentile_of(result, percentile)
    return value is not None and value <= limit


def sla_problems(report: BenchmarkReport, spec: ResolvedSpec) -> list[str]:
    """One line per SLA profile of the spec that was not measured or missed its limit."""
    percentile = spec.benchmark.percentile
    results = {result.name: result for result in report.profiles}
    problems = []
    for profile in spec.benchmark.sla:
        result = results.get(profile.name)
        value = None if result is None else percentile_of(result, percentile)
        if result is None or value is None:
            problems.append(f"profile {profile.name}: not measured")
        elif not profile_meets_sla(result, percentile, profile.max_latency_seconds):
            problems.append(
                f"profile {profile.name}: p{percentile} {seconds(value)} s > limit "
                f"{seconds(profile.max_latency_seconds)} s"
            )
    return problems


def _finite(value: float | None) -> float | None:
    """A non-finite number compares as nothing (NaN passes every `>=` test): it is missing."""
    return value if value is not None and math.isfinite(value) else None


def quality_problems(
    metrics: Metrics | None, champion: CurrentAlias | None, version: str | None
) -> tuple[str, list[str]]:
    """(reason, problems) for promotion.requireImprovement; no problems when it improves."""
    eval_loss = _finite(metrics.eval_loss) if metrics else None
    base = _finite(metrics.base_eval_loss) if metrics else None
    if eval_loss is None or base is None:
        missing = "evalLoss" if eval_loss is None else "baseEvalLoss"
        return Reason.MISSING_METRICS, [
            f"requireImprovement: the run's metrics have no {missing} to compare"
        ]
    problems = []
    if eval_loss >= base:
        problems.append(f"eval loss {loss(eval_loss)} does not beat the base model's {loss(base)}")
    is_itself = champion is not None and version is not None and champion.version == version
    rival = None if champion is None or is_itself else _finite(champion.eval_loss)
    if champion is not None and rival is not None and eval_loss >= rival:
        problems.append(
            f"eval loss {loss(eval_loss)} does not beat the current model "
            f"{champion.version}'s {loss(rival)}"
        )
    return Reason.NO_IMPROVEMENT, problems


def sla_summary(report: BenchmarkReport, profiles: list[SlaProfile], percentile: int) -> str:
    results = {result.name: result for result in report.profiles}
    parts = []
    for profile in profiles:
        value = percentile_of(results[profile.name], percentile)
        assert value is not None  # sla_problems found every profile measured
        limit = seconds(profile.max_latency_seconds)
        parts.append(f"{profile.name} p{percentile} {seconds(value)} s <= {limit} s")
    return "; ".join(parts)


def judge(
    report: BenchmarkReport,
    spec: ResolvedSpec,
    metrics: Metrics | None,
    champion: CurrentAlias | None,
    *,
    version: str | None = None,
) -> Verdict:
    """Promote only when every SLA profile met its limit and, with
    promotion.requireImprovement, the adapter's eval loss beats the base model's and the
    champion's (a champion without a recorded eval loss is not compared).

    `version` is the candidate's promoted name (RunPaths.version): a champion with the same
    version is the candidate itself, already promoted, and is not a rival.
    """
    problems = sla_problems(report, spec)
    reason = Reason.SLA_MISSED if problems else Reason.SLA_MET
    if spec.promotion.require_improvement:
        quality_reason, quality = quality_problems(metrics, champion, version)
        if quality and not problems:
            reason = quality_reason
        problems += quality
    if problems:
        return Verdict(False, reason, "; ".join(problems), tuple(problems))
    if not spec.benchmark.sla:  # the API refuses it; a gate with nothing to measure fails
        return Verdict(False, Reason.SLA_MISSED, "no SLA profiles to measure")
    message = "SLA met: " + sla_summary(report, spec.benchmark.sla, spec.benchmark.percentile)
    if spec.promotion.require_improvement and metrics and metrics.eval_loss is not None:
        message += f"; eval loss {loss(metrics.eval_loss)} improves on the base model"
        if champion is not None and champion.eval_loss is not None and champion.version != version:
            message += f" and {champion.version}'s"
    return Verdict(True, Reason.SLA_MET, message)
