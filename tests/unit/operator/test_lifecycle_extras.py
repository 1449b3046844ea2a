"""The lifecycle's decisions on re-benchmarking a settled run, on GPU-hours and cost, and on
retention (finished Jobs that are gone, older generations' run directories)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from finetune_core.api import Progress
from finetune_core.cost import Price, StageTime, run_cost
from finetune_core.lifecycle import (
    REBENCHMARK_ANNOTATION,
    Decision,
    Prune,
    Reads,
    Step,
    decide,
    stage_name,
)
from finetune_core.retention import to_prune
from finetune_operator.observe import run_state
from finetune_operator.settings import OperatorSettings
from tests.unit.operator.test_lifecycle import (
    METRICS,
    NAME,
    NOW,
    applied,
    at_phase,
    job,
    observe,
    reads,
    report,
)

STARTED = "2026-03-01T10:00:00Z"
ENDED = "2026-03-01T11:30:00Z"  # 1.5 hours later


def annotated(obj: dict[str, Any], value: str) -> dict[str, Any]:
    obj["metadata"]["annotations"][REBENCHMARK_ANNOTATION] = value
    return obj


def settled_at(phase: str, **status: Any) -> dict[str, Any]:
    obj = at_phase(phase)
    obj["status"].update(status)
    return obj


def bench(round: int = 1, outcome: str = "succeeded") -> dict[str, Any]:
    found = job("benchmark", outcome=outcome)
    found["metadata"]["name"] = stage_name(NAME, 1, "benchmark", round)
    return found


def timed(found: dict[str, Any], start: str = STARTED, end: str | None = ENDED) -> dict[str, Any]:
    found["status"]["startTime"] = start
    if end is not None:
        found["status"]["completionTime"] = end
    return found


# ------------------------------------------------------------------ re-benchmark


def test_round_names_keep_the_first_rounds_name() -> None:
    assert stage_name(NAME, 3, "benchmark") == "agent-g3-bench"
    assert stage_name(NAME, 3, "benchmark", 1) == "agent-g3-bench"
    assert stage_name(NAME, 3, "benchmark", 2) == "agent-g3-bench-r2"
    assert stage_name(NAME, 3, "train", 2) == "agent-g3-train"


@pytest.mark.parametrize("phase", ["Rejected", "AwaitingApproval"])
def test_a_rebenchmark_request_starts_round_two_without_retraining(phase: str) -> None:
    obj = annotated(settled_at(phase), "1")
    state = run_state(obj, [job("train", outcome="succeeded"), bench()])
    assert state.step is Step.REBENCHMARK
    assert not state.settled  # the timer polls it again

    decision = decide(observe(obj, job("train", outcome="succeeded"), bench()), NOW)
    assert (decision.create, decision.round) == ("benchmark", 2)
    assert decision.status["phase"] == "Benchmarking"
    assert decision.status["benchmarkRound"] == 2
    assert decision.status["rebenchmarkRequest"] == "1"
    assert decision.events[0].reason == "RebenchmarkStarted"
    assert "agent-g1-bench-r2" in decision.events[0].message
    assert "not retrained" in decision.events[0].message

    # The next pass sees round 2's Job as the benchmark stage: it waits for it.
    benchmarking = applied(obj, decision)
    running = run_state(
        benchmarking, [job("train", outcome="succeeded"), bench(), bench(2, "running")]
    )
    assert running.bench is not None and running.bench.name == "agent-g1-bench-r2"
    assert running.step is Step.BENCHMARKING
    assert running.superseded == ()  # round 1's Job is finished, not superseded
    # Round 2 passes: gated again, and (auto policy) promoted.
    done = [job("train", outcome="succeeded"), bench(), bench(2)]
    gated = decide(observe(benchmarking, *done, report=report(), metrics=METRICS), NOW)
    assert gated.promote and gated.create is None
    assert set(gated.status) == {"cost"}  # round 2's GPU-hours recorded; the phase moves next
    assert "agent-g1-bench-r2" in gated.status["cost"]["stages"]


def test_a_served_request_starts_nothing_again_and_a_new_value_starts_round_three() -> None:
    obj = annotated(settled_at("Rejected", benchmarkRound=2, rebenchmarkRequest="1"), "1")
    assert decide(observe(obj, bench(2)), NOW) == Decision()
    again = annotated(obj, "1/again")
    decision = decide(observe(again, bench(2)), NOW)
    assert (decision.create, decision.round) == ("benchmark", 3)
    assert decision.status["benchmarkRound"] == 3


@pytest.mark.parametrize("value", ["true", "2", "12", "yes"])
def test_a_request_of_another_form_warns_once_and_keeps_the_verdict(value: str) -> None:
    obj = annotated(settled_at("Rejected"), value)
    decision = decide(observe(obj), NOW)
    assert decision.create is None
    assert decision.status == {"rebenchmarkRequest": value}  # phase and message stay
    [event] = decision.events
    assert (event.type, event.reason) == ("Warning", "InvalidRebenchmark")
    assert '"1"' in event.message and "1/<anything>" in event.message
    assert decide(observe(applied(obj, decision)), NOW) == Decision()


@pytest.mark.parametrize(
    ("phase", "words"),
    [("Promoted", "a promoted run is not re-gated"), ("Failed", "only a Rejected")],
)
def test_a_run_that_cannot_be_regated_says_why(phase: str, words: str) -> None:
    obj = annotated(settled_at(phase), "1")
    decision = decide(observe(obj), NOW)
    assert decision.create is None and "phase" not in decision.status
    assert words in decision.events[0].message
    assert decide(observe(applied(obj, decision)), NOW) == Decision()


def test_a_request_during_training_waits_until_the_run_settles() -> None:
    obj = annotated(at_phase("Training"), "1")
    assert run_state(obj, [job("train", ready=True)]).step is Step.TRAINING


def test_a_name_too_long_for_a_round_is_refused_not_crashed() -> None:
    # The longest name the CRD allows leaves room for -g<generation>-bench-r<k> only while
    # the generation has up to three digits.
    obj = annotated(at_phase("Rejected", generation=1000), "1000")
    obj["metadata"]["name"] = "a" * 49
    decision = decide(observe(obj), NOW)
    assert decision.create is None
    assert "longer than 63 characters" in decision.events[0].message


def test_a_lost_round_is_named_by_its_round() -> None:
    obj = settled_at("Benchmarking", benchmarkRound=2)
    decision = decide(observe(obj, bench()), NOW)
    assert decision.status["phase"] == "Failed"
    assert "agent-g1-bench-r2 was deleted" in decision.status["message"]


# ------------------------------------------------------------------ finished Jobs that are gone


@pytest.mark.parametrize("phase", ["Promoted", "Rejected", "Failed", "AwaitingApproval"])
def test_a_settled_run_whose_jobs_are_gone_stays_as_it_is(phase: str) -> None:
    assert decide(observe(settled_at(phase)), NOW) == Decision()


def test_a_benchmark_job_gone_after_finishing_is_gated_by_its_report() -> None:
    obj = at_phase("Benchmarking")
    wanted = reads(obj, [])
    assert wanted.finished == "benchmark" and wanted.report and wanted.metrics
    decision = decide(observe(obj, report=report(), metrics=METRICS, finished=True), NOW)
    assert decision == Decision(promote=True)
    rejected = decide(observe(obj, report=report(7.25), metrics=METRICS, finished=True), NOW)
    assert rejected.status["phase"] == "Rejected"


def test_a_training_job_gone_after_finishing_starts_the_benchmark() -> None:
    obj = at_phase("Training")
    assert reads(obj, []) == Reads(progress=True, metrics=True, checkpoints=True, finished="train")
    decision = decide(observe(obj, metrics=METRICS, finished=True), NOW)
    assert decision.create == "benchmark"
    assert decision.status["phase"] == "Benchmarking"
    # Without its result, it was deleted before it finished, as before.
    assert decide(observe(obj), NOW).status["phase"] == "Failed"


# ------------------------------------------------------------------ GPU-hours and cost


def test_gpu_hours_are_wall_time_times_gpus_per_stage() -> None:
    stages = [
        StageTime("agent-g1-train", True, True, STARTED, ENDED),
        StageTime("agent-g1-bench", False, True, ENDED, "2026-03-01T11:36:00Z"),
    ]
    cost = run_cost({}, stages, gpus=2, price=Price(2.5, "EUR"))
    assert cost.training_gpu_hours == 3.0
    assert cost.benchmark_gpu_hours == 0.2
    assert cost.gpu_hours == 3.2
    assert cost.estimated_cost == 8.0
    assert cost.currency == "EUR"
    assert cost.projected_gpu_hours is None
    # A CPU run holds no GPU, however long it took.
    assert run_cost({}, stages, gpus=0, price=Price(2.5)).gpu_hours == 0.0


def test_recorded_hours_stay_once_the_job_is_gone_and_rounds_add_up() -> None:
    recorded = {"agent-g1-train": 3.0, "agent-g1-bench": 0.1}
    round_two = StageTime("agent-g1-bench-r2", False, True, STARTED, "2026-03-01T10:06:00Z")
    cost = run_cost(recorded, [round_two], gpus=1, price=Price(1.0))
    assert cost.benchmark_gpu_hours == 0.2
    assert cost.gpu_hours == 3.2
    assert set(cost.stages) == {"agent-g1-train", "agent-g1-bench", "agent-g1-bench-r2"}


def test_training_projects_its_cost_from_the_progress_eta() -> None:
    running = StageTime("agent-g1-train", True, False, STARTED)
    progress = Progress(step=10, total_steps=40, eta_seconds=3 * 3600, updated_at=ENDED)
    cost = run_cost({}, [running], gpus=2, price=Price(2.0), progress=progress)
    assert cost.gpu_hours == 0.0
    assert cost.projected_gpu_hours == 9.0  # (1.5 h elapsed + 3 h ETA) x 2 GPUs
    assert cost.projected_cost == 18.0


def test_the_status_records_each_finished_stage_at_its_transition() -> None:
    settings = OperatorSettings(gpu_hour_price=3.0, currency="EUR")
    obj = at_phase("Training", resources={"gpus": 1})
    train = timed(job("train", outcome="succeeded"))
    found = replace(observe(obj, train, metrics=METRICS), state=run_state(obj, [train], settings))
    decision = decide(found, NOW)
    assert decision.create == "benchmark"
    cost = decision.status["cost"]
    assert cost["trainingGpuHours"] == 1.5
    assert cost["estimatedCost"] == 4.5
    assert cost["currency"] == "EUR"
    assert cost["stages"] == {"agent-g1-train": 1.5}


def test_the_printer_column_reads_the_total() -> None:
    obj = settled_at("Promoted", cost={"gpuHours": 1.25})
    assert run_state(obj).status.cost is not None
    assert run_state(obj).status.cost.gpu_hours == 1.25  # type: ignore[union-attr]


# ------------------------------------------------------------------ retention


def test_older_superseded_generations_go_never_the_current_or_a_promoted_one() -> None:
    assert to_prune(range(1, 8), current=7, protected={2}, keep=2) == [1, 3, 4]
    assert to_prune(range(1, 8), current=7, protected=set(), keep=0) == [1, 2, 3, 4, 5, 6]
    assert to_prune([5], current=5, protected=set(), keep=0) == []
    assert to_prune([1, 2], current=3, protected=set(), keep=5) == []


def test_a_run_that_settles_prunes_by_its_spec_else_the_operators_setting() -> None:
    obj = at_phase("Benchmarking", retention={"keepGenerations": 2})
    obj["status"]["runs"] = [
        {"generation": 3, "phase": "Promoted"},
        {"generation": 2, "phase": "Rejected"},
    ]
    rejected = decide(observe(obj, bench(), report=report(7.25), metrics=METRICS), NOW)
    assert rejected.status["phase"] == "Rejected"
    assert rejected.prune == Prune(2, frozenset({3}))
    # No spec value: the operator's setting; neither: nothing is pruned.
    plain = at_phase("Benchmarking")
    settings = OperatorSettings(keep_generations=4)
    found = observe(plain, bench(), report=report(7.25), metrics=METRICS)
    with_setting = replace(found, state=run_state(plain, [bench()], settings))
    assert decide(with_setting, NOW).prune == Prune(4, frozenset())
    assert decide(found, NOW).prune is None
    # A run still going prunes nothing.
    training = at_phase("Training", retention={"keepGenerations": 1})
    assert decide(observe(training, job("train", ready=True)), NOW).prune is None
