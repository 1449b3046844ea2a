"""The promotion gate: may a run's adapter become the current model?

A pure decision over the benchmark report, the spec, the training metrics and the current
champion, so the operator, the local pipeline and the benchmark itself reach the same verdict.
The SLA verdict is recomputed from the measured percentiles, their confidence bounds and the
spec's limits with the benchmark's own rule (finetune_core.sampling.verdict: the interval,
then the margin, then the point estimate); the report's own `passed` flags are not trusted.
A report without bounds (written before they existed) is judged on the point estimate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from finetune_core.api import (
    BenchmarkReport,
    EvaluationReport,
    Metrics,
    ProfileResult,
    PromotionSpec,
    Reason,
    ResolvedSpec,
)
from finetune_core.layout import CurrentAlias
from finetune_core.sampling import VerdictBasis, verdict

DEFAULT_MARGIN = 0.25
BASIS_WORDS: dict[str, str] = {
    "interval": "interval",
    "margin": "margin",
    "pointEstimate": "point estimate",
}


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


def interval_of(result: ProfileResult) -> tuple[float, float] | None:
    """The profile's confidence bounds on the gated percentile, when it carries both."""
    lower, upper = _finite(result.lower_bound), _finite(result.upper_bound)
    return None if lower is None or upper is None else (lower, upper)


def profile_verdict(
    result: ProfileResult, percentile: int, limit: float, margin: float = DEFAULT_MARGIN
) -> tuple[bool, VerdictBasis] | None:
    """(passed, basis) for one profile; None when its percentile was not measured. The
    interval (when the profile has bounds), then the margin, then the point estimate; a
    report written before bounds existed (no verdictBasis) on the point estimate alone."""
    value = percentile_of(result, percentile)
    if value is None:
        return None
    interval = interval_of(result)
    if interval is None and result.verdict_basis is None:  # written before bounds existed
        return value <= limit, "pointEstimate"
    decided = verdict(value, interval, limit, margin, final=True)
    assert decided is not None  # final decisions always decide
    return decided


def profile_meets_sla(
    result: ProfileResult, percentile: int, limit: float, margin: float = DEFAULT_MARGIN
) -> bool:
    """One profile's verdict (the margin changes only the basis, never the outcome)."""
    decided = profile_verdict(result, percentile, limit, margin)
    return decided is not None and decided[0]


def bounds_text(result: ProfileResult) -> str:
    """' [low, high]' after a percentile, or nothing without bounds."""
    interval = interval_of(result)
    return "" if interval is None else f" [{seconds(interval[0])}, {seconds(interval[1])}]"


def sla_problems(report: BenchmarkReport, spec: ResolvedSpec) -> list[str]:
    """One line per SLA profile of the spec that was not measured or missed its limit."""
    percentile = spec.benchmark.percentile
    results = {result.name: result for result in report.profiles}
    problems = []
    for profile in spec.benchmark.sla:
        result = results.get(profile.name)
        limit = profile.max_latency_seconds
        decided = (
            None
            if result is None
            else profile_verdict(result, percentile, limit, spec.benchmark.decision_margin)
        )
        if result is None or decided is None:
            problems.append(f"profile {profile.name}: not measured")
        elif not decided[0]:
            problems.append(
                f"profile {profile.name}: {_comparison(result, percentile, limit, decided[1])}"
            )
    return problems


def _comparison(result: ProfileResult, percentile: int, limit: float, basis: str) -> str:
    """'p95 7.41 s > limit 6 s', with the bounds and the basis when the report has bounds."""
    value = percentile_of(result, percentile)
    assert value is not None
    interval = interval_of(result)
    measured = f"p{percentile} {seconds(value)} s"
    if interval is None and result.verdict_basis is None:  # an older report, as it was
        if value <= limit:
            return f"{measured} <= {seconds(limit)} s"
        return f"{measured} > limit {seconds(limit)} s"
    measured += bounds_text(result)
    if basis == "interval" and interval is not None:
        if interval[1] <= limit:
            return f"{measured}, upper bound <= limit {seconds(limit)} s (interval)"
        return f"{measured}, lower bound > limit {seconds(limit)} s (interval)"
    sign = "<=" if value <= limit else ">"
    return f"{measured} {sign} limit {seconds(limit)} s ({BASIS_WORDS[basis]})"


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


def overlap_problems(
    evaluation: EvaluationReport | None, promotion: PromotionSpec
) -> tuple[str, list[str]]:
    """(reason, problems) for promotion.minBleu and promotion.minRougeL: the adapter's scores
    on the review answers (report/evaluation.json) must reach them. A threshold whose figure
    is missing (no evaluation.json, no review answers) is not met."""
    checks = [
        ("minBleu", "BLEU", promotion.min_bleu, evaluation.adapter_bleu if evaluation else None),
        (
            "minRougeL",
            "ROUGE-L",
            promotion.min_rouge_l,
            evaluation.adapter_rouge_l if evaluation else None,
        ),
    ]
    missing, low = [], []
    for field_name, label, threshold, value in checks:
        if threshold is None:
            continue
        value = _finite(value)
        if value is None:
            missing.append(
                f"promotion.{field_name} {threshold:g}: the run has no {label} of the adapter's "
                "review answers (report/evaluation.json; evaluation.samples must be above 0)"
            )
        elif value < threshold:
            low.append(
                f"the adapter's {label} {value:.4g} is below promotion.{field_name} {threshold:g}"
            )
    reason = Reason.MISSING_METRICS if missing else Reason.REVIEW_SCORES_LOW
    return reason, missing + low


def sla_summary(report: BenchmarkReport, spec: ResolvedSpec) -> str:
    percentile = spec.benchmark.percentile
    results = {result.name: result for result in report.profiles}
    parts = []
    for profile in spec.benchmark.sla:
        result = results[profile.name]
        limit = profile.max_latency_seconds
        decided = profile_verdict(result, percentile, limit, spec.benchmark.decision_margin)
        assert decided is not None  # sla_problems found every profile measured
        parts.append(f"{profile.name} {_comparison(result, percentile, limit, decided[1])}")
    return "; ".join(parts)


def judge(
    report: BenchmarkReport,
    spec: ResolvedSpec,
    metrics: Metrics | None,
    champion: CurrentAlias | None,
    *,
    version: str | None = None,
    evaluation: EvaluationReport | None = None,
) -> Verdict:
    """Promote only when every SLA profile met its limit and, with
    promotion.requireImprovement, the adapter's eval loss beats the base model's and the
    champion's (a champion without a recorded eval loss is not compared), and, with
    promotion.minBleu / minRougeL, the adapter's review answers score at least that
    (`evaluation`: report/evaluation.json).

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
    overlap_reason, overlap = overlap_problems(evaluation, spec.promotion)
    if overlap and not problems:
        reason = overlap_reason
    problems += overlap
    if problems:
        return Verdict(False, reason, "; ".join(problems), tuple(problems))
    if not spec.benchmark.sla:  # the API refuses it; a gate with nothing to measure fails
        return Verdict(False, Reason.SLA_MISSED, "no SLA profiles to measure")
    message = "SLA met: " + sla_summary(report, spec)
    if spec.promotion.require_improvement and metrics and metrics.eval_loss is not None:
        message += f"; eval loss {loss(metrics.eval_loss)} improves on the base model"
        if champion is not None and champion.eval_loss is not None and champion.version != version:
            message += f" and {champion.version}'s"
    if evaluation is not None and spec.promotion.min_bleu is not None:
        message += f"; BLEU {evaluation.adapter_bleu:.4g} >= {spec.promotion.min_bleu:g}"
    if evaluation is not None and spec.promotion.min_rouge_l is not None:
        message += f"; ROUGE-L {evaluation.adapter_rouge_l:.4g} >= {spec.promotion.min_rouge_l:g}"
    return Verdict(True, Reason.SLA_MET, message)
