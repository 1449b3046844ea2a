"""The promotion gate: SLA per profile, then (optionally) quality against base and champion."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from finetune_core.api import FineTuneJobSpec, Metrics, ProfileResult
from finetune_core.gate import judge, profile_verdict
from finetune_core.layout import CurrentAlias
from tests.unit.benchmark.builders import SLA, make_report, make_spec, profile

ANSWER = [SLA[1]]  # answer: 50 new tokens within 6 s


def champion(eval_loss: float | None, version: str = "ml-agent-g1") -> CurrentAlias:
    return CurrentAlias(
        version=version,
        uri=f"s3://finetune/models/smollm2-135m/{version}",
        promoted_at="2026-01-01T00:00:00Z",
        eval_loss=eval_loss,
    )


def test_every_profile_within_its_limit_passes() -> None:
    report = make_report(profile("question", 3.1, 3.4, 10), profile("answer", 0.9, 1.2, 6))
    verdict = judge(report, make_spec(), metrics=None, champion=None)
    assert verdict.passed
    assert verdict.reason == "SlaMet"
    assert "question p95 3.4 s <= 10 s" in verdict.message
    assert "answer p95 1.2 s <= 6 s" in verdict.message


def test_a_missed_profile_is_named_with_its_numbers() -> None:
    report = make_report(profile("question", 3.1, 3.4, 10), profile("answer", 5.0, 7.41, 6))
    verdict = judge(report, make_spec(), metrics=None, champion=None)
    assert not verdict.passed
    assert verdict.reason == "SlaMissed"
    assert verdict.message == "profile answer: p95 7.41 s > limit 6 s"
    assert "question" not in verdict.message


def test_every_missed_profile_is_listed() -> None:
    report = make_report(profile("question", 11, 12.5, 10), profile("answer", 7, 8, 6))
    verdict = judge(report, make_spec(), metrics=None, champion=None)
    assert verdict.problems == (
        "profile question: p95 12.5 s > limit 10 s",
        "profile answer: p95 8 s > limit 6 s",
    )


def test_the_spec_percentile_is_the_one_held_to_the_limit() -> None:
    # p50 within the limit, p95 over it: passes at p50, fails at p95.
    result = profile("answer", p50=5.0, p95=7.0, limit=6)
    assert judge(make_report(result), make_spec(ANSWER, percentile=50), None, None).passed
    assert not judge(make_report(result), make_spec(ANSWER, percentile=95), None, None).passed
    strict = judge(make_report(result), make_spec(ANSWER, percentile=99), None, None)
    assert strict.message == "profile answer: p99 7 s > limit 6 s"


def test_the_verdict_is_recomputed_from_the_numbers_and_the_spec_limit() -> None:
    lying = profile("answer", 5.0, 7.0, limit=100)  # the report's own limit and flag are wrong
    lying.passed = True
    assert not judge(make_report(lying), make_spec(ANSWER), None, None).passed


def test_a_profile_the_report_lacks_is_not_met() -> None:
    verdict = judge(make_report(profile("question", 1, 2, 10)), make_spec(), None, None)
    assert not verdict.passed
    assert verdict.message == "profile answer: not measured"


def test_limit_equal_to_the_percentile_passes() -> None:
    assert judge(make_report(profile("answer", 5, 6.0, 6)), make_spec(ANSWER), None, None).passed


def test_no_profiles_is_refused_and_never_passes_the_gate() -> None:
    """An explicit `sla: []` is invalid: a gate with nothing to measure would pass anything."""
    with pytest.raises(ValidationError, match="at least 1 item"):
        make_spec(sla=[])
    spec = make_spec()
    spec.benchmark.sla.clear()  # as if it had slipped past validation
    verdict = judge(make_report(), spec, None, None)
    assert not verdict.passed and verdict.message == "no SLA profiles to measure"


def test_an_omitted_benchmark_gets_the_seed_plans_two_profiles() -> None:
    spec = FineTuneJobSpec.model_validate(
        {"model": {"preset": "phi-4"}, "dataset": {"uri": "s3://datasets/a.jsonl"}}
    )
    assert [(p.name, p.max_new_tokens, p.max_latency_seconds) for p in spec.benchmark.sla] == [
        ("question", 200, 10),
        ("answer", 50, 6),
    ]


def test_a_non_finite_percentile_counts_as_not_measured() -> None:
    report = make_report(profile("question", 1, 2, 10), profile("answer", 1, 2, 6))
    # NaN cannot pass validation (model_copy does not validate); the gate must not trust it.
    report.profiles[1] = report.profiles[1].model_copy(update={"p95": float("nan")})
    verdict = judge(report, make_spec(), None, None)
    assert not verdict.passed and "answer: not measured" in verdict.message


# ---------------------------------------------------------------- requireImprovement

FAST = make_report(profile("question", 1, 2, 10), profile("answer", 1, 2, 6))


def test_improvement_over_base_and_champion_passes() -> None:
    metrics = Metrics(eval_loss=1.1, base_eval_loss=1.5)
    verdict = judge(FAST, make_spec(require_improvement=True), metrics, champion(1.2))
    assert verdict.passed
    assert verdict.reason == "SlaMet"
    assert "eval loss 1.1 improves on the base model and ml-agent-g1's" in verdict.message


def test_a_challenger_worse_than_the_champion_is_rejected_with_both_losses() -> None:
    metrics = Metrics(eval_loss=1.3, base_eval_loss=1.5)
    verdict = judge(FAST, make_spec(require_improvement=True), metrics, champion(1.2))
    assert not verdict.passed
    assert verdict.reason == "NoImprovement"
    assert verdict.message == "eval loss 1.3 does not beat the current model ml-agent-g1's 1.2"


def test_an_adapter_no_better_than_the_base_model_is_rejected() -> None:
    metrics = Metrics(eval_loss=1.5, base_eval_loss=1.5)
    verdict = judge(FAST, make_spec(require_improvement=True), metrics, None)
    assert not verdict.passed
    assert verdict.reason == "NoImprovement"
    assert verdict.message == "eval loss 1.5 does not beat the base model's 1.5"


def test_without_require_improvement_a_worse_challenger_still_passes() -> None:
    metrics = Metrics(eval_loss=2.0, base_eval_loss=1.5)
    assert judge(FAST, make_spec(), metrics, champion(1.2)).passed


def test_missing_losses_cannot_show_an_improvement() -> None:
    spec = make_spec(require_improvement=True)
    no_metrics = judge(FAST, spec, None, None)
    assert (no_metrics.passed, no_metrics.reason) == (False, "MissingMetrics")
    assert "evalLoss" in no_metrics.message
    no_base = judge(FAST, spec, Metrics(eval_loss=1.0), None)
    assert (no_base.passed, no_base.reason) == (False, "MissingMetrics")
    assert "baseEvalLoss" in no_base.message


def test_a_champion_without_a_loss_is_not_compared() -> None:
    metrics = Metrics(eval_loss=1.1, base_eval_loss=1.5)
    assert judge(FAST, make_spec(require_improvement=True), metrics, champion(None)).passed


def test_the_champion_that_is_this_run_is_not_a_rival() -> None:
    """Deciding again after this run was promoted (an operator restart) stays a pass."""
    metrics = Metrics(eval_loss=1.1, base_eval_loss=1.5)
    spec = make_spec(require_improvement=True)
    itself = champion(1.1, version="ml-agent-g2")
    assert judge(FAST, spec, metrics, itself, version="ml-agent-g2").passed
    assert not judge(FAST, spec, metrics, itself, version="ml-agent-g3").passed


def test_sla_reason_wins_and_every_problem_is_listed() -> None:
    slow = make_report(profile("question", 1, 2, 10), profile("answer", 7, 8, 6))
    metrics = Metrics(eval_loss=1.3, base_eval_loss=1.5)
    verdict = judge(slow, make_spec(require_improvement=True), metrics, champion(1.2))
    assert verdict.reason == "SlaMissed"
    assert verdict.problems == (
        "profile answer: p95 8 s > limit 6 s",
        "eval loss 1.3 does not beat the current model ml-agent-g1's 1.2",
    )
    assert verdict.message == "; ".join(verdict.problems)


def bounded(name: str, p95: float, lower: float, upper: float, limit: float) -> ProfileResult:
    """A profile measured by a benchmark that computes confidence bounds."""
    return profile(name, p95 * 0.8, p95, limit).model_copy(
        update={"lower_bound": lower, "upper_bound": upper}
    )


def test_an_interval_within_the_limit_passes_even_where_the_point_estimate_does_not() -> None:
    # The point estimate alone (an older report) would fail: 6.1 > 6.
    report = make_report(bounded("answer", p95=6.1, lower=5.2, upper=5.95, limit=6))
    verdict = judge(report, make_spec(ANSWER), None, None)
    assert verdict.passed
    assert verdict.message == (
        "SLA met: answer p95 6.1 s [5.2, 5.95], upper bound <= limit 6 s (interval)"
    )


def test_an_interval_above_the_limit_fails_with_its_bounds_named() -> None:
    report = make_report(bounded("answer", p95=6.5, lower=6.2, upper=7.0, limit=6))
    verdict = judge(report, make_spec(ANSWER), None, None)
    assert not verdict.passed
    assert verdict.problems == (
        "profile answer: p95 6.5 s [6.2, 7], lower bound > limit 6 s (interval)",
    )


def test_an_open_interval_leaves_the_margin_then_the_point_estimate_to_decide() -> None:
    far = make_report(bounded("answer", p95=4.0, lower=2.0, upper=6.5, limit=6))
    verdict = judge(far, make_spec(ANSWER), None, None)
    assert verdict.passed and verdict.message.endswith("p95 4 s [2, 6.5] <= limit 6 s (margin)")
    near = make_report(bounded("answer", p95=6.2, lower=5.0, upper=7.5, limit=6))
    verdict = judge(near, make_spec(ANSWER), None, None)
    assert verdict.problems == ("profile answer: p95 6.2 s [5, 7.5] > limit 6 s (point estimate)",)


def test_the_spec_decision_margin_is_the_one_used() -> None:
    report = make_report(bounded("answer", p95=4.0, lower=2.0, upper=6.5, limit=6))
    spec = make_spec(ANSWER)
    spec.benchmark.decision_margin = 0.5  # 4 s is within 50 % of 6 s: the point estimate
    assert judge(report, spec, None, None).message.endswith("(point estimate)")


def test_a_report_without_bounds_is_judged_on_the_point_estimate() -> None:
    report = make_report(profile("answer", 5.0, 5.9, 6))  # written before bounds existed
    assert profile_verdict(report.profiles[0], 95, 6) == (True, "pointEstimate")
    assert (
        judge(report, make_spec(ANSWER), None, None).message == "SLA met: answer p95 5.9 s <= 6 s"
    )


def test_a_new_report_without_bounds_names_the_margin() -> None:
    result = profile("answer", 5.0, 9.0, 6).model_copy(update={"verdict_basis": "margin"})
    verdict = judge(make_report(result), make_spec(ANSWER), None, None)
    assert verdict.problems == ("profile answer: p95 9 s > limit 6 s (margin)",)
