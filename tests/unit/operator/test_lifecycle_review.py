"""The lifecycle with report/evaluation.json: its figures reach the status, the review-score
thresholds gate, promotion.export: merged names the merged model, and a new generation
clears what described the last one."""

from __future__ import annotations

from finetune_core.api import EvaluationReport, ReviewAnswer
from finetune_core.lifecycle import decide
from tests.unit.operator.test_lifecycle import (
    METRICS,
    NOW,
    applied,
    at_phase,
    benchmarked,
    condition,
    observe,
    report,
    run_uri,
)

EVALUATION = EvaluationReport(
    dataset="s3://data/chat/held-out.jsonl",
    eval_loss=1.3,
    perplexity=3.67,
    bits_per_byte=0.82,
    base_bleu=2.5,
    adapter_bleu=9.75,
    base_rouge_l=0.12,
    adapter_rouge_l=0.31,
    answers=[ReviewAnswer(prompt="What is pip?", reference="An installer.", base="?", adapter="!")],
)
PROMOTED = "s3://finetune/models/ml/smollm2-135m/agent-g1"


def test_the_evaluation_figures_reach_the_status_without_the_answers() -> None:
    obj = at_phase("Benchmarking")
    decision = benchmarked(
        obj, report=report(), metrics=METRICS, evaluation=EVALUATION, promoted_uri=PROMOTED
    )
    assert decision.status["phase"] == "Promoted"
    assert decision.status["evaluation"] == {
        "samples": 1,
        "adapterBleu": 9.75,
        "baseBleu": 2.5,
        "adapterRougeL": 0.31,
        "baseRougeL": 0.12,
        "bitsPerByte": 0.82,
    }
    assert (
        "merged" not in decision.status["artifacts"] or not decision.status["artifacts"]["merged"]
    )


def test_a_run_without_evaluation_json_has_no_evaluation_status() -> None:
    obj = at_phase("Benchmarking")
    decision = benchmarked(obj, report=report(), metrics=METRICS, promoted_uri=PROMOTED)
    assert decision.status["phase"] == "Promoted"
    assert decision.status.get("evaluation") is None


def test_a_bleu_below_the_threshold_rejects_the_run() -> None:
    obj = at_phase("Benchmarking", promotion={"minBleu": 10})
    decision = benchmarked(obj, report=report(), metrics=METRICS, evaluation=EVALUATION)
    assert not decision.promote
    assert decision.status["phase"] == "Rejected"
    assert decision.status["sla"] == "Failed"
    stalled = condition(applied(obj, decision), "Stalled")
    assert stalled["reason"] == "ReviewScoresLow"
    assert stalled["message"] == "rejected: the adapter's BLEU 9.75 is below promotion.minBleu 10"
    assert decision.status["evaluation"]["adapterBleu"] == 9.75


def test_a_threshold_without_its_figure_rejects_saying_it_is_missing() -> None:
    obj = at_phase("Benchmarking", promotion={"minRougeL": 0.2})
    decision = benchmarked(obj, report=report(), metrics=METRICS)
    assert decision.status["phase"] == "Rejected"
    stalled = condition(applied(obj, decision), "Stalled")
    assert stalled["reason"] == "MissingMetrics"
    assert "promotion.minRougeL 0.2: the run has no ROUGE-L" in stalled["message"]


def test_scores_that_meet_the_thresholds_promote() -> None:
    obj = at_phase("Benchmarking", promotion={"minBleu": 9, "minRougeL": 0.3})
    first = benchmarked(obj, report=report(), metrics=METRICS, evaluation=EVALUATION)
    assert first.promote
    done = benchmarked(
        obj, report=report(), metrics=METRICS, evaluation=EVALUATION, promoted_uri=PROMOTED
    )
    assert done.status["phase"] == "Promoted"
    assert "BLEU 9.75 >= 9; ROUGE-L 0.31 >= 0.3" in done.status["message"]


def test_export_merged_names_the_merged_model_among_the_artifacts() -> None:
    obj = at_phase("Benchmarking", promotion={"export": ["adapter", "merged"]})
    decision = benchmarked(obj, report=report(), metrics=METRICS, promoted_uri=PROMOTED)
    assert decision.status["artifacts"]["merged"] == f"{run_uri()}/merged"


def test_a_new_generation_clears_the_last_runs_evaluation() -> None:
    obj = at_phase("Benchmarking")
    promoted = applied(
        obj,
        benchmarked(
            obj, report=report(), metrics=METRICS, evaluation=EVALUATION, promoted_uri=PROMOTED
        ),
    )
    assert promoted["status"]["evaluation"]["bitsPerByte"] == 0.82
    promoted["metadata"]["generation"] = 2
    promoted["spec"]["lora"] = {"r": 32}
    started = applied(promoted, decide(observe(promoted), NOW))
    assert started["status"]["observedGeneration"] == 2
    assert "evaluation" not in started["status"]
