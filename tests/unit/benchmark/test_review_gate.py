"""The gate's optional text-overlap thresholds (promotion.minBleu, promotion.minRougeL) and
the promotion.export setting."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from finetune_core.api import EvaluationReport, FineTuneJobSpec, ResolvedSpec
from finetune_core.gate import judge
from tests.unit.benchmark.builders import make_report, profile

PASSING = make_report(profile("question", 3.1, 3.4, 10), profile("answer", 0.9, 1.2, 6))


def spec_with(**promotion: Any) -> ResolvedSpec:
    return FineTuneJobSpec.model_validate(
        {
            "model": {"preset": "smollm2-135m"},
            "dataset": {"uri": "s3://datasets/devassist.jsonl"},
            "promotion": promotion,
        }
    ).resolve()


def scores(bleu: float | None, rouge_l: float | None) -> EvaluationReport:
    return EvaluationReport(
        dataset="validation split",
        eval_loss=1.2,
        perplexity=3.3,
        bits_per_byte=0.9,
        base_bleu=1.0,
        adapter_bleu=bleu,
        base_rouge_l=0.1,
        adapter_rouge_l=rouge_l,
    )


def test_without_thresholds_the_scores_do_not_gate() -> None:
    verdict = judge(PASSING, spec_with(), None, None, evaluation=scores(0.0, 0.0))
    assert verdict.passed
    assert judge(PASSING, spec_with(), None, None, evaluation=None).passed


def test_scores_at_or_above_the_thresholds_pass_and_are_named() -> None:
    spec = spec_with(minBleu=10, minRougeL=0.3)
    verdict = judge(PASSING, spec, None, None, evaluation=scores(10.0, 0.42))
    assert verdict.passed, verdict.message
    assert "BLEU 10 >= 10" in verdict.message
    assert "ROUGE-L 0.42 >= 0.3" in verdict.message


def test_a_score_below_its_threshold_rejects_with_both_numbers() -> None:
    spec = spec_with(minBleu=10, minRougeL=0.3)
    verdict = judge(PASSING, spec, None, None, evaluation=scores(12.0, 0.25))
    assert not verdict.passed
    assert verdict.reason == "ReviewScoresLow"
    assert verdict.problems == ("the adapter's ROUGE-L 0.25 is below promotion.minRougeL 0.3",)


def test_a_missing_figure_with_a_threshold_is_not_met() -> None:
    spec = spec_with(minBleu=5)
    verdict = judge(PASSING, spec, None, None, evaluation=None)
    assert not verdict.passed
    assert verdict.reason == "MissingMetrics"
    assert "promotion.minBleu 5: the run has no BLEU" in verdict.message
    no_answers = judge(PASSING, spec, None, None, evaluation=scores(None, 0.5))
    assert not no_answers.passed and no_answers.reason == "MissingMetrics"


def test_a_missed_sla_keeps_its_reason_and_the_score_problem_is_listed_too() -> None:
    slow = make_report(profile("question", 3.1, 3.4, 10), profile("answer", 5.0, 7.41, 6))
    verdict = judge(slow, spec_with(minBleu=50), None, None, evaluation=scores(1.0, 0.1))
    assert verdict.reason == "SlaMissed"
    assert len(verdict.problems) == 2


def test_thresholds_are_bounded() -> None:
    with pytest.raises(ValidationError, match="minBleu"):
        spec_with(minBleu=101)
    with pytest.raises(ValidationError, match="minRougeL"):
        spec_with(minRougeL=1.5)


def test_export_defaults_to_the_adapter_and_accepts_merged_beside_it() -> None:
    assert spec_with().promotion.export == ["adapter"]
    assert spec_with(export=["adapter", "merged"]).promotion.export == ["adapter", "merged"]


@pytest.mark.parametrize(
    ("export", "message"),
    [
        ([], "at least 1 item"),
        (["merged"], "must include adapter"),
        (["adapter", "adapter"], "each export format may appear once"),
        (["adapter", "gguf"], "'adapter' or 'merged'"),
    ],
)
def test_bad_exports_are_refused_naming_why(export: list[str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        spec_with(export=export)
