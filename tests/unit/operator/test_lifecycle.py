"""The lifecycle's decisions for FineTuneJobs and Jobs as read from the API, phase by phase,
without any server."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from finetune_core.api import BenchmarkReport, Metrics, ProfileResult, Progress
from finetune_core.layout import AliasPaths, CurrentAlias, ErrorReport
from finetune_core.lifecycle import (
    APPROVE_ANNOTATION,
    NOTHING,
    RUN_HISTORY,
    Decision,
    InvalidRunFile,
    Observation,
    Reads,
    RunFiles,
    StageName,
    Step,
    decide,
    merge_patch,
    retrying,
    stage_name,
)
from finetune_core.lifecycle import reads as lifecycle_reads
from finetune_operator.builders import LABEL_JOB, LABEL_MANAGED_BY, MANAGED_BY
from finetune_operator.observe import run_state, settled, stage_state, termination_message
from tests.support.manifests import SMALL_SPEC, finetunejob

NAME = "agent"
NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
LATER = NOW + timedelta(minutes=5)
DATASET = "s3://data/chat/v3.jsonl"


def run_uri(generation: int = 1) -> str:
    return f"s3://finetune/runs/ml/{NAME}/g{generation}"


def ftj(
    generation: int = 1,
    status: dict[str, Any] | None = None,
    annotations: dict[str, str] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    base = {**SMALL_SPEC, "dataset": {"uri": DATASET}}
    return finetunejob(
        NAME,
        namespace="ml",
        generation=generation,
        uid="u-1",
        annotations=dict(annotations or {}),
        status=status,
        base=base,
        **spec,
    )


def job(
    stage: StageName,
    generation: int = 1,
    outcome: str = "running",
    ready: bool = False,
    reason: str = "",
    message: str = "",
    owner: str = "u-1",
) -> dict[str, Any]:
    status: dict[str, Any] = {"active": 1, "ready": int(ready)} if outcome == "running" else {}
    if outcome == "succeeded":
        status = {
            "succeeded": 1,
            "conditions": [
                {"type": "SuccessCriteriaMet", "status": "True"},
                {"type": "Complete", "status": "True"},
            ],
        }
    elif outcome == "failed":
        status = {
            "failed": 4,
            "conditions": [
                {"type": "FailureTarget", "status": "True", "reason": reason, "message": message},
                {"type": "Failed", "status": "True", "reason": reason, "message": message},
            ],
        }
    return {
        "metadata": {
            "name": stage_name(NAME, generation, stage),
            "labels": {LABEL_JOB: NAME, LABEL_MANAGED_BY: MANAGED_BY},
            "ownerReferences": [{"kind": "FineTuneJob", "name": NAME, "uid": owner}],
        },
        "status": status,
    }


OUTCOMES = {"promoted_uri", "promotion_error"}


def observe(obj: dict[str, Any], *jobs: dict[str, Any], **found: Any) -> Observation:
    """What the controller would observe: the object and its Jobs, and the files found (a
    termination_message is the failed stage's pod message)."""
    generation = obj["metadata"]["generation"]
    outcomes = {key: found.pop(key) for key in OUTCOMES & found.keys()}
    return Observation(
        state=run_state(obj, jobs),
        run_uri=run_uri(generation),
        files=RunFiles(**{k: v for k, v in found.items() if k != "termination_message"}),
        stage_message=found.get("termination_message"),
        **outcomes,
    )


def reads(obj: dict[str, Any], jobs: list[dict[str, Any]]) -> Reads:
    return lifecycle_reads(run_state(obj, jobs))


def applied(obj: dict[str, Any], decision: Decision) -> dict[str, Any]:
    """The object after the API server merged the decision's status patch."""
    result = copy.deepcopy(obj)
    result["status"] = merge_patch(obj.get("status") or {}, decision.status)
    return result


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in obj["status"]["conditions"] if c["type"] == kind)


def at_phase(phase: str, generation: int = 1, **spec: Any) -> dict[str, Any]:
    """An object whose status was recorded for `generation` in `phase`."""
    return ftj(
        generation,
        status={
            "phase": phase,
            "observedGeneration": generation,
            "message": f"now {phase}",
            "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
            "artifacts": {"run": run_uri(generation)},
            "conditions": [
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": phase,
                    "observedGeneration": generation,
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                },
                {
                    "type": "Reconciling",
                    "status": "True",
                    "reason": phase,
                    "observedGeneration": generation,
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                },
                {
                    "type": "Stalled",
                    "status": "False",
                    "reason": phase,
                    "observedGeneration": generation,
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                },
            ],
        },
        **spec,
    )


def report(answer_p95: float = 2.5) -> BenchmarkReport:
    return BenchmarkReport(
        passed=answer_p95 <= 6,
        percentile=95,
        device="cpu",
        profiles=[
            ProfileResult(
                name="question",
                max_new_tokens=48,
                max_latency_seconds=10,
                p50=3.0,
                p95=3.5,
                passed=True,
            ),
            ProfileResult(
                name="answer",
                max_new_tokens=24,
                max_latency_seconds=6,
                p50=2.0,
                p95=answer_p95,
                passed=answer_p95 <= 6,
            ),
        ],
    )


METRICS = Metrics(train_loss=1.4, eval_loss=1.21, base_eval_loss=1.9)


# ------------------------------------------------------------------ reading Jobs and pods


def test_job_state_follows_the_job_controllers_conditions() -> None:
    assert stage_state(job("train")).outcome == "running"
    assert stage_state(job("train", ready=True)).ready
    assert stage_state(job("train", outcome="succeeded")).outcome == "succeeded"
    failed = stage_state(job("train", outcome="failed", reason="DeadlineExceeded", message="late"))
    assert (failed.outcome, failed.reason, failed.message) == ("failed", "DeadlineExceeded", "late")


def test_termination_message_is_the_newest_failed_containers() -> None:
    def pod(finished: str, terminated: dict[str, Any]) -> dict[str, Any]:
        return {
            "status": {
                "containerStatuses": [
                    {"state": {"terminated": {"finishedAt": finished, **terminated}}}
                ]
            }
        }

    pods = [
        pod("2026-01-01T00:01:00Z", {"exitCode": 1, "message": "first attempt\n"}),
        pod("2026-01-01T00:09:00Z", {"exitCode": 137, "reason": "OOMKilled"}),
        pod("2026-01-01T00:10:00Z", {"exitCode": 0, "message": "fine"}),
    ]
    assert termination_message(pods) == "container OOMKilled (exit code 137)"
    assert termination_message(pods[:1]) == "first attempt"
    assert termination_message([]) is None


# ------------------------------------------------------------------ validation


def test_a_new_object_starts_a_run_by_validating() -> None:
    decision = decide(observe(ftj()), NOW)
    status = decision.status
    assert status["phase"] == "Validating"
    assert status["observedGeneration"] == 1
    assert status["model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert status["artifacts"]["run"] == run_uri()
    assert status["startedAt"] == "2026-03-01T12:00:00Z"
    assert decision.requeue and decision.create is None
    assert [e.reason for e in decision.events] == ["RunStarted"]
    obj = applied(ftj(), decision)
    assert condition(obj, "Reconciling")["status"] == "True"
    assert condition(obj, "Ready")["status"] == "False"
    assert condition(obj, "Ready")["observedGeneration"] == 1


def test_invalid_spec_fails_listing_every_field_and_creates_nothing() -> None:
    obj = ftj(lora={"r": 0}, training={"learningRate": -1})
    decision = decide(observe(obj), NOW)
    assert decision.create is None and not decision.promote
    assert decision.status["phase"] == "Failed"
    obj = applied(obj, decision)
    stalled = condition(obj, "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "InvalidSpec")
    assert "spec.lora.r: must be >= 1" in stalled["message"]
    assert "spec.training.learningRate: must be > 0" in stalled["message"]
    assert [(e.type, e.reason) for e in decision.events] == [("Warning", "InvalidSpec")]
    assert decide(observe(obj), LATER) == NOTHING


def test_paths_relative_to_a_manifest_are_invalid_in_a_cluster() -> None:
    obj = ftj(
        dataset={"uri": "datasets/chat.jsonl"},
        benchmark={
            "sla": [
                {
                    "name": "q",
                    "maxNewTokens": 8,
                    "maxLatencySeconds": 1,
                    "prompts": "prompts.jsonl",
                },
            ]
        },
    )
    message = decide(observe(obj), NOW).status["message"]
    assert "spec.dataset.uri: must be an s3:// or file:// URI in a cluster" in message
    assert "spec.benchmark.sla[0].prompts: must be an s3:// or file:// URI" in message
    file_uri = ftj(dataset={"uri": "file:///data/chat.jsonl"})
    assert decide(observe(file_uri), NOW).status["phase"] == "Validating"


def test_validating_creates_the_training_job_unless_the_dataset_is_missing() -> None:
    obj = at_phase("Validating")
    assert reads(obj, []) == Reads(dataset=DATASET)
    decision = decide(observe(obj), NOW)
    assert decision.create == "train"
    assert decision.status["phase"] == "Pending"
    assert [e.reason for e in decision.events] == ["JobCreated"]

    missing = decide(observe(obj, dataset_missing=True), NOW)
    assert missing.create is None
    assert missing.status["phase"] == "Failed"
    assert missing.status["message"] == f"spec.dataset.uri: {DATASET} does not exist"
    assert missing.events[0].reason == "DatasetNotFound"


def test_lora_dropout_on_a_gpu_is_announced() -> None:
    obj = ftj(resources={"gpus": 1}, lora={"dropout": 0.05})
    reasons = [e.reason for e in decide(observe(obj), NOW).events]
    assert reasons == ["RunStarted", "SlowLoraPath"]
    assert [e.reason for e in decide(observe(ftj(lora={"dropout": 0.05})), NOW).events] == [
        "RunStarted"
    ]


# ------------------------------------------------------------------ training


def test_pending_until_the_training_pod_is_ready() -> None:
    obj = at_phase("Pending")
    assert decide(observe(obj, job("train")), NOW) == Decision()
    decision = decide(observe(obj, job("train", ready=True)), NOW)
    assert decision.status["phase"] == "Training"
    assert [e.reason for e in decision.events] == ["TrainingStarted"]


def test_training_refreshes_progress_without_an_event() -> None:
    obj = at_phase("Training")
    train = job("train", ready=True)
    assert reads(obj, [train]) == Reads(progress=True, checkpoints=True)
    progress = Progress(step=30, total_steps=120, loss=1.3, eta_seconds=90)
    decision = decide(
        observe(obj, train, progress=progress, last_checkpoint=f"{run_uri()}/checkpoints/step-20"),
        NOW,
    )
    assert decision.events == () and decision.create is None
    assert set(decision.status) == {"progress", "artifacts", "cost"}  # cost rides along
    assert decision.status["progress"]["percent"] == 25
    assert decision.status["progress"]["step"] == 30
    assert decision.status["artifacts"]["lastCheckpoint"] == f"{run_uri()}/checkpoints/step-20"
    again = applied(obj, decision)
    assert decide(observe(again, train, progress=progress), LATER) == Decision()


def test_progress_alone_shows_the_pod_is_training() -> None:
    decision = decide(observe(at_phase("Pending"), job("train"), progress=Progress(step=1)), NOW)
    assert decision.status["phase"] == "Training"


def test_a_retried_training_pod_stays_training() -> None:
    assert decide(observe(at_phase("Training"), job("train", ready=False)), NOW) == Decision()


def test_finished_training_starts_the_benchmark_with_the_metrics() -> None:
    obj = at_phase("Training")
    train = job("train", outcome="succeeded")
    assert reads(obj, [train]) == Reads(progress=True, metrics=True, checkpoints=True)
    decision = decide(observe(obj, train, metrics=METRICS), NOW)
    assert decision.create == "benchmark"
    assert decision.status["phase"] == "Benchmarking"
    assert decision.status["metrics"]["evalLoss"] == 1.21
    assert decision.status["artifacts"]["adapter"] == f"{run_uri()}/adapter"
    assert decision.status["message"] == (
        "training finished (eval loss 1.21); created benchmark Job agent-g1-bench"
    )


# ------------------------------------------------------------------ failures


def failed_train(**found: Any) -> Decision:
    train = job(
        "train",
        outcome="failed",
        reason="BackoffLimitExceeded",
        message="Job has reached the specified backoff limit",
    )
    return decide(observe(at_phase("Training"), train, **found), NOW)


def test_failed_training_prefers_the_message_of_error_json() -> None:
    error = ErrorReport(stage="train", reason="InvalidDataset", message="line 3: no messages")
    decision = failed_train(error=error, termination_message="Traceback ... ValueError")
    assert decision.status["phase"] == "Failed"
    assert decision.status["message"] == "train failed: line 3: no messages"
    stalled = condition(applied(at_phase("Training"), decision), "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "InvalidDataset")
    assert [(e.type, e.reason) for e in decision.events] == [("Warning", "InvalidDataset")]


def test_failed_training_falls_back_to_the_pod_then_to_the_job() -> None:
    by_pod = failed_train(termination_message="RuntimeError: out of memory")
    assert by_pod.status["message"] == "train failed: RuntimeError: out of memory"
    assert by_pod.events[0].reason == "BackoffLimitExceeded"
    by_job = failed_train()
    assert by_job.status["message"] == "train failed: Job has reached the specified backoff limit"


def test_error_json_of_another_stage_does_not_explain_a_failure() -> None:
    stale = ErrorReport(stage="benchmark", reason="Whatever", message="not this")
    assert failed_train(error=stale).events[0].reason == "BackoffLimitExceeded"
    bench = job(
        "benchmark",
        outcome="failed",
        reason="DeadlineExceeded",
        message="Job was active longer than specified deadline",
    )
    retried = ErrorReport(stage="train", reason="StoreUnavailable", message="first try")
    decision = decide(
        observe(at_phase("Benchmarking"), job("train", outcome="succeeded"), bench, error=retried),
        NOW,
    )
    assert decision.status["message"] == (
        "benchmark failed: Job was active longer than specified deadline"
    )
    assert decision.events[0].reason == "DeadlineExceeded"


def test_a_reason_from_error_json_becomes_a_valid_condition_reason() -> None:
    error = ErrorReport(stage="validate", reason="bad input!", message="no rows")
    assert failed_train(error=error).events[0].reason == "badinput"


def test_a_deleted_job_fails_the_run_and_is_not_recreated() -> None:
    training = decide(observe(at_phase("Training")), NOW)
    assert training.create is None
    assert training.status["message"] == (
        "train failed: Job agent-g1-train was deleted before it finished"
    )
    benchmarking = decide(observe(at_phase("Benchmarking"), job("train", outcome="succeeded")), NOW)
    assert benchmarking.create is None
    assert benchmarking.events[0].reason == "JobDeleted"


# ------------------------------------------------------------------ gate and promotion


def benchmarked(obj: dict[str, Any], **found: Any) -> Decision:
    jobs = (job("train", outcome="succeeded"), job("benchmark", outcome="succeeded"))
    return decide(observe(obj, *jobs, **found), NOW)


def test_passing_benchmark_is_promoted_after_the_copy() -> None:
    obj = at_phase("Benchmarking")
    jobs = [job("train", outcome="succeeded"), job("benchmark", outcome="succeeded")]
    assert reads(obj, jobs) == Reads(
        metrics=True, report=True, evaluation=True, champion=AliasPaths("ml", "smollm2-135m")
    )
    first = benchmarked(obj, report=report(), metrics=METRICS)
    assert first == Decision(promote=True)

    uri = "s3://finetune/models/ml/smollm2-135m/agent-g1"
    decision = benchmarked(obj, report=report(), metrics=METRICS, promoted_uri=uri)
    assert decision.status["phase"] == "Promoted"
    assert decision.status["promotedModel"] == uri
    assert decision.status["sla"] == "Passed"
    assert decision.status["artifacts"]["report"] == f"{run_uri()}/report/index.html"
    assert decision.status["benchmark"]["profiles"][1]["p95"] == 2.5
    promoted = applied(obj, decision)
    ready = condition(promoted, "Ready")
    assert (ready["status"], ready["observedGeneration"]) == ("True", 1)
    assert condition(promoted, "Reconciling")["status"] == "False"
    assert condition(promoted, "Stalled")["status"] == "False"
    assert settled(promoted)


def test_failing_benchmark_is_rejected_naming_the_profile_and_numbers() -> None:
    obj = at_phase("Benchmarking")
    decision = benchmarked(obj, report=report(answer_p95=7.25), metrics=METRICS)
    assert not decision.promote
    assert decision.status["phase"] == "Rejected"
    assert decision.status["sla"] == "Failed"
    stalled = condition(applied(obj, decision), "Stalled")
    assert stalled["status"] == "True"
    assert stalled["reason"] == "SlaMissed"
    assert stalled["message"] == "rejected: profile answer: p95 7.25 s > limit 6 s"
    assert decision.events[0].type == "Warning"


def test_improvement_gate_compares_with_the_champion() -> None:
    obj = at_phase("Benchmarking", promotion={"requireImprovement": True})
    champion = CurrentAlias(version="ml-other-g4", uri="s3://x", promoted_at="t", eval_loss=1.1)
    decision = benchmarked(obj, report=report(), metrics=METRICS, champion=champion)
    assert decision.status["phase"] == "Rejected"
    assert "ml-other-g4" in decision.status["message"]


def test_policy_none_gates_and_ends_passed_without_promoting() -> None:
    obj = at_phase("Benchmarking", promotion={"policy": "none"})
    decision = benchmarked(obj, report=report(), metrics=METRICS)
    assert not decision.promote
    assert decision.status["phase"] == "Passed"
    assert decision.status["sla"] == "Passed"
    assert "promotedModel" not in decision.status
    assert decision.status["message"].endswith("not promoted (promotion.policy: none)")
    passed = applied(obj, decision)
    ready = condition(passed, "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "Passed")
    assert condition(passed, "Stalled")["status"] == "False"
    assert condition(passed, "Reconciling")["status"] == "False"
    assert settled(passed)
    assert decide(observe(passed), LATER) == NOTHING


def test_policy_none_that_misses_its_sla_is_rejected() -> None:
    obj = at_phase("Benchmarking", promotion={"policy": "none"})
    decision = benchmarked(obj, report=report(answer_p95=7.25), metrics=METRICS)
    assert decision.status["phase"] == "Rejected"
    assert condition(applied(obj, decision), "Stalled")["status"] == "True"


def test_missing_report_fails_the_run() -> None:
    decision = benchmarked(at_phase("Benchmarking"), metrics=METRICS)
    assert decision.status["phase"] == "Failed"
    assert decision.events[0].reason == "ReportMissing"


def test_promotion_error_fails_the_run() -> None:
    decision = benchmarked(
        at_phase("Benchmarking"),
        report=report(),
        promotion_error="no adapter to promote at s3://...",
    )
    assert decision.status["phase"] == "Failed"
    assert decision.events[0].reason == "PromotionFailed"


def test_manual_policy_waits_for_an_approval_of_its_generation() -> None:
    obj = at_phase("Benchmarking", promotion={"policy": "manual"})
    decision = benchmarked(obj, report=report(), metrics=METRICS)
    assert decision.status["phase"] == "AwaitingApproval"
    assert f'{APPROVE_ANNOTATION}="1"' in decision.status["message"]
    waiting = applied(obj, decision)
    assert condition(waiting, "Reconciling")["status"] == "False"
    assert condition(waiting, "Ready")["status"] == "False"
    assert settled(waiting)
    assert decide(observe(waiting), LATER) == NOTHING

    waiting["metadata"]["annotations"][APPROVE_ANNOTATION] = "1"
    assert not settled(waiting)
    found = {"report": report(), "metrics": METRICS}
    assert reads(waiting, []) == Reads(
        metrics=True, report=True, evaluation=True, champion=AliasPaths("ml", "smollm2-135m")
    )
    assert decide(observe(waiting, **found), LATER) == Decision(promote=True)
    uri = "s3://finetune/models/ml/smollm2-135m/agent-g1"
    promoted = decide(observe(waiting, **found, promoted_uri=uri), LATER)
    assert promoted.status["phase"] == "Promoted"
    assert promoted.status["approvedGeneration"] == 1
    assert promoted.status["message"].endswith(f"; generation 1 approved; promoted to {uri}")


@pytest.mark.parametrize("value", ["true", "yes", "2", " 1"])
def test_an_approval_of_another_form_or_generation_approves_nothing(value: str) -> None:
    obj = at_phase("Benchmarking", promotion={"policy": "manual"})
    waiting = applied(obj, benchmarked(obj, report=report(), metrics=METRICS))
    waiting["metadata"]["annotations"][APPROVE_ANNOTATION] = value
    decision = decide(observe(waiting), LATER)
    assert not decision.promote
    after = applied(waiting, decision)
    assert after["status"]["phase"] == "AwaitingApproval"
    assert condition(after, "Ready")["reason"] == "InvalidApproval"
    assert '"1"' in after["status"]["message"] and "approves nothing" in after["status"]["message"]
    [event] = decision.events
    assert (event.type, event.reason) == ("Warning", "InvalidApproval")
    # Said once: the next pass over the same annotation changes nothing and says nothing.
    assert decide(observe(after), LATER) == NOTHING


def test_approval_regates_against_the_champion_read_at_approval_time() -> None:
    """Days may pass between the gate and the approval: a better champion promoted since
    then wins, and the approved run is rejected instead of displacing it."""
    obj = at_phase("Benchmarking", promotion={"policy": "manual", "requireImprovement": True})
    waiting = applied(obj, benchmarked(obj, report=report(), metrics=METRICS))
    assert waiting["status"]["phase"] == "AwaitingApproval"
    waiting["metadata"]["annotations"][APPROVE_ANNOTATION] = "1"
    better = CurrentAlias(version="other-g4", uri="s3://m/x", promoted_at="t", eval_loss=1.0)
    found = {"report": report(), "metrics": METRICS, "champion": better}
    decision = decide(observe(waiting, **found), LATER)
    assert decision.status["phase"] == "Rejected"
    assert "other-g4" in decision.status["message"]


def test_approval_given_in_advance_promotes_at_once() -> None:
    obj = at_phase("Benchmarking", promotion={"policy": "manual"})
    obj["metadata"]["annotations"][APPROVE_ANNOTATION] = "1"
    assert benchmarked(obj, report=report()) == Decision(promote=True)


def test_a_stale_approval_does_not_approve_a_new_generation() -> None:
    obj = at_phase("Benchmarking", generation=2, promotion={"policy": "manual"})
    obj["metadata"]["annotations"][APPROVE_ANNOTATION] = "1"
    jobs = (job(stage, generation=2, outcome="succeeded") for stage in ("train", "benchmark"))
    decision = decide(observe(obj, *jobs, report=report(), metrics=METRICS), NOW)
    assert decision.status["phase"] == "AwaitingApproval"


def test_a_non_finite_result_fails_the_run_and_promotes_nothing() -> None:
    obj = at_phase("Benchmarking")
    nan = InvalidRunFile("metrics.json", "metrics.json: evalLoss: not finite", non_finite=True)
    decision = benchmarked(obj, report=report(), invalid=(nan,))
    assert not decision.promote
    assert (decision.status["phase"], decision.status["conditions"][0]["reason"]) == (
        "Failed",
        "NonFiniteLoss",
    )
    trained = decide(
        observe(at_phase("Training"), job("train", outcome="succeeded"), invalid=(nan,)), NOW
    )
    assert (trained.status["phase"], trained.create) == ("Failed", None)


# ------------------------------------------------------------------ new generations


def test_a_spec_edit_supersedes_the_running_generation() -> None:
    obj = at_phase("Training")
    obj["status"]["progress"] = {"step": 10, "totalSteps": 40}
    obj["metadata"]["generation"] = 2
    obj["spec"]["lora"] = {"r": 32}
    decision = decide(observe(obj, job("train", generation=1, ready=True)), NOW)
    assert decision.delete == ("agent-g1-train",)
    assert decision.create is None and decision.requeue
    status = decision.status
    assert status["phase"] == "Validating"
    assert status["observedGeneration"] == 2
    assert status["progress"] is None
    assert status["artifacts"]["run"] == run_uri(2)
    assert status["runs"] == [
        {
            "generation": 1,
            "phase": "Superseded",
            "message": "now Training",
            "run": run_uri(1),
            "finishedAt": "2026-03-01T12:00:00Z",
        }
    ]
    started = applied(obj, decision)
    assert "progress" not in started["status"]
    assert condition(started, "Reconciling")["observedGeneration"] == 2
    next_step = decide(observe(started, job("train", generation=1, ready=True)), NOW)
    assert next_step.create == "train"
    # The old Job is still there (it takes time to go): deleted again until it is gone.
    assert next_step.delete == ("agent-g1-train",)


def test_runs_keep_the_newest_five_with_how_each_ended() -> None:
    obj = at_phase("Promoted", generation=7)
    ready, reconciling, _ = obj["status"]["conditions"]
    ready.update(status="True", lastTransitionTime="2026-02-01T00:00:00Z")
    reconciling["status"] = "False"
    obj["status"]["sla"] = "Passed"
    obj["status"]["metrics"] = {"evalLoss": 1.05}
    obj["status"]["runs"] = [{"generation": g, "phase": "Rejected"} for g in range(6, 1, -1)]
    obj["metadata"]["generation"] = 8
    runs = decide(observe(obj), NOW).status["runs"]
    assert len(runs) == RUN_HISTORY
    assert runs[0] == {
        "generation": 7,
        "phase": "Promoted",
        "message": "now Promoted",
        "evalLoss": 1.05,
        "slaPassed": True,
        "run": run_uri(7),
        "finishedAt": "2026-02-01T00:00:00Z",
    }
    assert [r["generation"] for r in runs] == [7, 6, 5, 4, 3]


def test_an_invalid_edit_records_the_previous_run_and_stops_its_job() -> None:
    obj = at_phase("Training")
    obj["metadata"]["generation"] = 2
    obj["spec"]["lora"] = {"r": 0}
    decision = decide(observe(obj, job("train", generation=1)), NOW)
    assert decision.status["phase"] == "Failed"
    assert decision.status["observedGeneration"] == 2
    assert decision.status["runs"][0]["generation"] == 1
    assert decision.delete == ("agent-g1-train",)


# ------------------------------------------------------------------ restarts


def lifecycle() -> list[tuple[str, dict[str, Any], list[dict[str, Any]], dict[str, Any]]]:
    """(what happened, object, Jobs, files read) at each step of a run, each the state an
    operator finds when it starts right then."""
    steps = []
    obj = ftj()
    jobs: list[dict[str, Any]] = []
    found: dict[str, Any] = {}

    def step(label: str) -> None:
        nonlocal obj
        decision = decide(observe(obj, *jobs, **found), NOW)
        if decision.promote:
            decision = decide(observe(obj, *jobs, **found, promoted_uri="s3://m"), NOW)
        if decision.create is not None:
            jobs.append(job(decision.create))
        obj = applied(obj, decision)
        steps.append((label, copy.deepcopy(obj), [copy.deepcopy(j) for j in jobs], dict(found)))

    step("validating")
    step("training job created")
    jobs[0] = job("train", ready=True)
    step("training")
    jobs[0] = job("train", outcome="succeeded")
    found["metrics"] = METRICS
    step("benchmark job created")
    jobs[1] = job("benchmark", outcome="succeeded")
    found["report"] = report()
    step("promoted")
    return steps


@pytest.mark.parametrize(
    "obj, jobs, found",
    # Validating is a pass-through: the same pass goes on to create the training Job.
    [pytest.param(obj, jobs, found, id=label) for label, obj, jobs, found in lifecycle()[1:]],
)
def test_a_restart_at_any_step_repeats_nothing(
    obj: dict[str, Any], jobs: list[dict[str, Any]], found: dict[str, Any]
) -> None:
    assert decide(observe(obj, *jobs, **found), LATER) == Decision()


def test_the_lifecycle_visits_every_phase_in_order() -> None:
    assert [obj["status"]["phase"] for _, obj, _, _ in lifecycle()] == [
        "Validating",
        "Pending",
        "Training",
        "Benchmarking",
        "Promoted",
    ]


def test_a_job_created_but_not_recorded_is_adopted() -> None:
    decision = decide(observe(at_phase("Validating"), job("train")), NOW)
    assert decision.create is None
    assert decision.status["phase"] == "Pending"
    bench = decide(
        observe(
            at_phase("Training"),
            job("train", outcome="succeeded"),
            job("benchmark"),
            metrics=METRICS,
        ),
        NOW,
    )
    assert bench.create is None
    assert bench.status["phase"] == "Benchmarking"
    assert bench.status["metrics"]["evalLoss"] == 1.21


def test_conditions_keep_their_transition_time_while_their_status_holds() -> None:
    obj = at_phase("Pending")
    training = applied(obj, decide(observe(obj, job("train", ready=True)), NOW))
    reconciling = condition(training, "Reconciling")
    assert (reconciling["reason"], reconciling["lastTransitionTime"]) == (
        "TrainingStarted",
        "2026-01-01T00:00:00Z",
    )
    failed = applied(
        training,
        decide(
            observe(
                training, job("train", outcome="failed", reason="DeadlineExceeded", message="late")
            ),
            LATER,
        ),
    )
    assert condition(failed, "Reconciling")["lastTransitionTime"] == "2026-03-01T12:05:00Z"
    assert condition(failed, "Stalled")["lastTransitionTime"] == "2026-03-01T12:05:00Z"
    assert condition(failed, "Ready")["lastTransitionTime"] == "2026-01-01T00:00:00Z"


def test_nothing_happens_to_an_object_being_deleted() -> None:
    obj = at_phase("Training")
    obj["metadata"]["deletionTimestamp"] = "2026-03-01T11:00:00Z"
    assert run_state(obj, [job("train", outcome="succeeded")]).step is Step.SETTLED
    assert decide(observe(obj, job("train", outcome="succeeded")), NOW) == NOTHING


# ------------------------------------------------------------------ run identity


def test_a_predecessors_job_is_deleted_not_adopted_and_ours_waits_for_it() -> None:
    """Deleted and applied again with the same name: the old object's Job (another owner
    UID) is not this run's; it is deleted, and ours is created once it is gone."""
    obj = at_phase("Validating")
    old = job("train", outcome="succeeded", owner="u-old")
    state = run_state(obj, [old])
    assert (state.train, state.leftovers) == (None, ("agent-g1-train",))
    waiting = decide(observe(obj, old), NOW)
    assert (waiting.create, waiting.delete, waiting.status) == (None, ("agent-g1-train",), {})
    created = decide(observe(obj), NOW)
    assert (created.create, created.delete) == ("train", ())


def test_a_job_a_user_merely_labelled_is_neither_adopted_nor_deleted() -> None:
    obj = at_phase("Training")
    labelled = job("train", outcome="succeeded")
    labelled["metadata"]["labels"].pop(LABEL_MANAGED_BY)
    state = run_state(obj, [labelled])
    assert (state.train, state.leftovers, state.superseded) == (None, (), ())
    assert "agent-g1-train" not in decide(observe(obj, labelled), NOW).delete


def test_a_stage_the_api_refuses_for_good_fails_the_run_with_the_servers_words() -> None:
    refused = Observation(
        state=run_state(at_phase("Validating")),
        run_uri=run_uri(),
        create_refused='403 Forbidden: jobs.batch is forbidden: User "x" cannot create',
    )
    decision = decide(refused, NOW)
    assert (decision.create, decision.status["phase"]) == (None, "Failed")
    assert decision.status["conditions"][0]["reason"] == "JobRejected"
    assert "jobs.batch is forbidden" in decision.status["message"]


def test_a_run_meeting_transient_faults_says_so_in_its_reconciling_condition() -> None:
    training = run_state(at_phase("Training"))
    decision = retrying(training, NOW, "retrying after 3 failed attempts; the last: timeout")
    [reconciling] = [c for c in decision.status["conditions"] if c["type"] == "Reconciling"]
    assert (reconciling["status"], reconciling["reason"]) == ("True", "Retrying")
    assert reconciling["message"].endswith("the last: timeout")
    assert "phase" not in decision.status and not decision.events
    assert retrying(run_state(at_phase("Promoted")), NOW, "x") == NOTHING
