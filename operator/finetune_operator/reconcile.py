"""What to do next with one FineTuneJob: pure decisions over what was observed, no I/O.

The controller reads the object and its Jobs, asks `reads` which run files and pods matter
now, reads them, and calls `decide`. It then carries the decision out (delete superseded
Jobs, create a Job, promote), merges `Decision.status` into .status and posts
`Decision.events`. A decision depends only on what was observed, never on the operator's
memory, so an operator restarted at any moment resumes where the run stands; Job names are
deterministic, so asking for a Job that already exists is harmless.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from finetune_core import gate
from finetune_core.api import (
    DATASET_SCHEMES,
    TERMINAL_PHASES,
    Artifacts,
    BenchmarkReport,
    Condition,
    FineTuneJobSpec,
    FineTuneJobStatus,
    Metrics,
    Phase,
    Progress,
    ResolvedSpec,
    RunRecord,
)
from finetune_core.layout import CurrentAlias, ErrorReport, RunPaths, model_key
from finetune_core.manifest import InvalidManifest, Problem, parse_manifest
from finetune_operator.builders import Stage, child_name

APPROVE_ANNOTATION = "finetune.dev/approve"
RUN_HISTORY = 5
MAX_MESSAGE = 2000
ACTIVE_PHASES: frozenset[str] = frozenset({"Validating", "Pending", "Training", "Benchmarking"})
# Which error.json stages explain a failed Job: the trainer checks its input ("validate")
# before it trains. A stale error.json from a retried, then successful, pod is ignored.
ERROR_STAGES: dict[Stage, frozenset[str]] = {
    "train": frozenset({"validate", "train"}),
    "benchmark": frozenset({"benchmark"}),
}


class Step(Enum):
    """Where a run stands, from the recorded status and the observed Jobs."""

    INVALID = "invalid"  # the spec does not validate
    NEW_RUN = "new-run"  # metadata.generation is not the one the status describes
    SETTLED = "settled"  # finished, or being deleted: nothing to do
    AWAITING_APPROVAL = "awaiting-approval"
    APPROVED = "approved"
    START_TRAINING = "start-training"
    TRAINING = "training"
    TRAINING_FAILED = "training-failed"
    TRAINED = "trained"
    TRAINING_JOB_DELETED = "training-job-deleted"
    BENCHMARKING = "benchmarking"
    BENCHMARK_FAILED = "benchmark-failed"
    BENCHMARKED = "benchmarked"
    BENCHMARK_JOB_DELETED = "benchmark-job-deleted"


@dataclass(frozen=True)
class JobState:
    """A batch/v1 Job as far as the run cares: running, succeeded or failed (and why)."""

    name: str
    outcome: Literal["running", "succeeded", "failed"]
    ready: bool = False
    reason: str = ""
    message: str = ""


def job_state(job: Mapping[str, Any]) -> JobState:
    """Read a Job's outcome from its conditions, as the Job controller sets them."""
    status = job.get("status") or {}
    true = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
    name = job["metadata"]["name"]
    if "Complete" in true:
        return JobState(name, "succeeded")
    if "Failed" in true:
        failed = true["Failed"]
        return JobState(
            name,
            "failed",
            reason=failed.get("reason") or "JobFailed",
            message=failed.get("message") or "",
        )
    return JobState(name, "running", ready=(status.get("ready") or 0) > 0)


def cluster_problems(spec: FineTuneJobSpec) -> list[Problem]:
    """A pod reads URIs only: the manifest-relative paths `finetune run` accepts mean
    nothing in a cluster."""
    uris = [("spec.dataset.uri", spec.dataset.uri)] + [
        (f"spec.benchmark.sla[{index}].prompts", profile.prompts)
        for index, profile in enumerate(spec.benchmark.sla)
        if profile.prompts is not None
    ]
    return [
        Problem(
            path,
            "must be an s3:// or file:// URI in a cluster (relative paths work only "
            "with `finetune run`)",
        )
        for path, uri in uris
        if not uri.startswith(DATASET_SCHEMES)
    ]


@dataclass(frozen=True)
class Situation:
    """The object, its validated spec and its Jobs, interpreted once."""

    namespace: str
    name: str
    generation: int
    status: FineTuneJobStatus
    raw_status: Mapping[str, Any]
    spec: FineTuneJobSpec | None
    problems: tuple[Problem, ...]
    approved: bool
    deleting: bool
    train: JobState | None
    bench: JobState | None
    superseded: tuple[str, ...]  # unfinished Jobs of other generations

    @property
    def phase(self) -> str | None:
        """The phase of this generation's run; None before the run is recorded."""
        if self.status.observed_generation != self.generation:
            return None
        return self.status.phase

    @property
    def resolved(self) -> ResolvedSpec:
        assert self.spec is not None
        return self.spec.resolve()

    @property
    def paths(self) -> RunPaths:
        return RunPaths(self.namespace, self.name, self.generation)

    @property
    def step(self) -> Step:
        phase = self.phase
        if self.deleting or phase in TERMINAL_PHASES:
            return Step.SETTLED
        if self.problems:
            return Step.INVALID
        if phase is None:
            return Step.NEW_RUN
        if phase == "AwaitingApproval":
            return Step.APPROVED if self.approved else Step.AWAITING_APPROVAL
        if self.bench is not None:
            return {
                "running": Step.BENCHMARKING,
                "succeeded": Step.BENCHMARKED,
                "failed": Step.BENCHMARK_FAILED,
            }[self.bench.outcome]
        # The status moves to Benchmarking only after the benchmark Job was created.
        if phase == "Benchmarking":
            return Step.BENCHMARK_JOB_DELETED
        if self.train is not None:
            return {
                "running": Step.TRAINING,
                "succeeded": Step.TRAINED,
                "failed": Step.TRAINING_FAILED,
            }[self.train.outcome]
        if phase in ("Pending", "Training"):
            return Step.TRAINING_JOB_DELETED
        return Step.START_TRAINING


def situation(obj: Mapping[str, Any], jobs: Sequence[Mapping[str, Any]] = ()) -> Situation:
    """Interpret a FineTuneJob (as read from the API) and the Jobs labelled with its name."""
    meta = obj.get("metadata") or {}
    name, generation = meta.get("name", ""), int(meta.get("generation") or 1)
    spec, problems = None, []
    try:
        spec = parse_manifest(obj).spec
        problems = cluster_problems(spec)
    except InvalidManifest as invalid:
        problems = invalid.problems
    raw_status = obj.get("status") or {}
    try:
        status = FineTuneJobStatus.model_validate(raw_status)
    except ValidationError:  # hand-edited beyond repair: start the record afresh
        status = FineTuneJobStatus()
    states = {job["metadata"]["name"]: job_state(job) for job in jobs}
    train_name, bench_name = (
        child_name(name, generation, "train"),
        child_name(name, generation, "benchmark"),
    )
    superseded = tuple(
        sorted(
            job_name
            for job_name, state in states.items()
            if job_name not in (train_name, bench_name) and state.outcome == "running"
        )
    )
    return Situation(
        namespace=meta.get("namespace", ""),
        name=name,
        generation=generation,
        status=status,
        raw_status=raw_status,
        spec=spec,
        problems=tuple(problems),
        approved=(meta.get("annotations") or {}).get(APPROVE_ANNOTATION) == "true",
        deleting=bool(meta.get("deletionTimestamp")),
        train=states.get(train_name),
        bench=states.get(bench_name),
        superseded=superseded,
    )


def settled(obj: Mapping[str, Any]) -> bool:
    """Nothing can change without a new event (spec edit, annotation): no need to poll."""
    return situation(obj).step in (Step.SETTLED, Step.AWAITING_APPROVAL)


# ------------------------------------------------------------------ observation


@dataclass(frozen=True)
class Reads:
    """What the controller should read before deciding, for the run's current step."""

    progress: bool = False
    metrics: bool = False
    report: bool = False
    error: bool = False
    checkpoints: bool = False
    champion: str | None = None  # model key whose current.json to read
    pods_of: Stage | None = None  # the failed stage whose pods' termination messages to read
    dataset: str | None = None  # s3:// URI whose existence to check before training


def reads(obj: Mapping[str, Any], jobs: Sequence[Mapping[str, Any]]) -> Reads:
    s = situation(obj, jobs)
    match s.step:
        case Step.START_TRAINING if s.resolved.dataset.uri.startswith("s3://"):
            return Reads(dataset=s.resolved.dataset.uri)
        case Step.TRAINING:
            return Reads(progress=True, checkpoints=True)
        case Step.TRAINED:
            return Reads(progress=True, metrics=True, checkpoints=True)
        case Step.TRAINING_FAILED:
            return Reads(progress=True, error=True, pods_of="train")
        case Step.BENCHMARKING if s.phase != "Benchmarking":
            return Reads(progress=True, metrics=True, checkpoints=True)
        case Step.BENCHMARKED:
            return Reads(metrics=True, report=True, champion=model_key(s.resolved))
        case Step.BENCHMARK_FAILED:
            return Reads(error=True, pods_of="benchmark")
    return Reads()


@dataclass(frozen=True)
class Observation:
    """The FineTuneJob, its Jobs and whatever `reads` asked for."""

    obj: Mapping[str, Any]
    jobs: Sequence[Mapping[str, Any]] = ()
    run_uri: str = ""  # the store's URI of this generation's run directory
    progress: Progress | None = None
    metrics: Metrics | None = None
    report: BenchmarkReport | None = None
    error: ErrorReport | None = None
    termination_message: str | None = None
    champion: CurrentAlias | None = None
    last_checkpoint: str | None = None  # URI
    dataset_missing: bool = False
    promoted_uri: str | None = None  # set once the controller has promoted the run
    promotion_error: str | None = None


def termination_message(pods: Sequence[Mapping[str, Any]]) -> str | None:
    """Why the newest failed container of a Job's pods stopped: its termination message
    (the error, or the log tail with FallbackToLogsOnError), else its reason and code."""
    found: list[tuple[str, str]] = []
    for pod in pods:
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            for state in (container.get("state"), container.get("lastState")):
                terminated = (state or {}).get("terminated")
                if not terminated or not terminated.get("exitCode"):
                    continue
                message = (terminated.get("message") or "").strip() or (
                    f"container {terminated.get('reason') or 'terminated'} "
                    f"(exit code {terminated['exitCode']})"
                )
                found.append((terminated.get("finishedAt") or "", message))
    return max(found)[1] if found else None


def with_percent(progress: Progress) -> Progress:
    if progress.step is None or not progress.total_steps:
        return progress
    percent = max(0, min(100, progress.step * 100 // progress.total_steps))
    return progress.model_copy(update={"percent": percent})


# ------------------------------------------------------------------ decisions


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event on the FineTuneJob."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Decision:
    """What to do, then what to record. `status` is a merge patch of .status (empty: no
    change); `requeue` asks for another observe-decide pass right away."""

    status: dict[str, Any] = field(default_factory=dict)
    events: tuple[Event, ...] = ()
    create: Stage | None = None
    delete: tuple[str, ...] = ()
    promote: bool = False
    requeue: bool = False


NOTHING = Decision()


def timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def decide(obs: Observation, now: datetime) -> Decision:
    """The next step of the run, given everything observed."""
    s = situation(obs.obj, obs.jobs)
    at = timestamp(now)
    match s.step:
        case Step.SETTLED | Step.AWAITING_APPROVAL:
            return NOTHING
        case Step.INVALID:
            return _invalid(s, obs, at)
        case Step.NEW_RUN:
            return _new_run(s, obs, at)
        case Step.START_TRAINING:
            return _start_training(s, obs, at)
        case Step.TRAINING:
            return _training(s, obs, at)
        case Step.TRAINED:
            return _trained(s, obs, at)
        case Step.TRAINING_FAILED:
            assert s.train is not None
            return _job_failed(s, obs, at, "train", s.train)
        case Step.BENCHMARKING:
            return _benchmarking(s, obs, at)
        case Step.BENCHMARKED:
            return _gate(s, obs, at)
        case Step.BENCHMARK_FAILED:
            assert s.bench is not None
            return _job_failed(s, obs, at, "benchmark", s.bench)
        case Step.APPROVED:
            return _promote(s, obs, at, "approved by annotation " + APPROVE_ANNOTATION)
        case Step.TRAINING_JOB_DELETED | Step.BENCHMARK_JOB_DELETED:
            stage: Stage = "train" if s.step is Step.TRAINING_JOB_DELETED else "benchmark"
            job = child_name(s.name, s.generation, stage)
            return _fail(
                s, at, "JobDeleted", f"{stage} failed: Job {job} was deleted before it finished"
            )
    raise AssertionError(s.step)  # pragma: no cover


def _new_run(s: Situation, obs: Observation, at: str) -> Decision:
    """A new generation: record the previous run, stop its Jobs, start validating."""
    spec = s.resolved
    message = f"generation {s.generation}: fine-tuning {spec.model_id} on {spec.dataset.uri}"
    patch = {**_new_run_fields(s, obs, at), "model": spec.model_id}
    events = [Event("Normal", "RunStarted", message)]
    assert s.spec is not None
    if s.spec.resources.gpus > 0 and spec.lora_dropout != 0:
        events.append(
            Event(
                "Normal",
                "SlowLoraPath",
                f"lora.dropout is {spec.lora_dropout}: "
                "unsloth takes its slower path (0 enables its fast kernels)",
            )
        )
    return _move(
        s,
        at,
        "Validating",
        "RunStarted",
        message,
        patch,
        events=events,
        delete=s.superseded,
        requeue=True,
    )


def _new_run_fields(s: Situation, obs: Observation, at: str) -> dict[str, Any]:
    """Clear what described the previous generation's run and archive it in status.runs."""
    previous = _record(s.status, at)
    runs = [previous, *s.status.runs] if previous is not None else s.status.runs
    return {
        "startedAt": at,
        "runs": [r.to_wire() for r in runs[:RUN_HISTORY]],
        "model": None,
        "progress": None,
        "metrics": None,
        "benchmark": None,
        "artifacts": _wire(Artifacts(run=obs.run_uri)),
        "promotedModel": None,
        "sla": None,
    }


def _record(status: FineTuneJobStatus, at: str) -> RunRecord | None:
    if status.observed_generation is None or status.phase is None:
        return None
    finished = status.phase in TERMINAL_PHASES
    # A finished run ended when Ready (promoted) or Stalled (failed, rejected) turned True.
    ending = "Ready" if status.phase == "Promoted" else "Stalled"
    ended = next((c for c in status.conditions if c.type == ending and c.status == "True"), None)
    return RunRecord(
        generation=status.observed_generation,
        phase=status.phase if finished else "Superseded",
        message=status.message,
        eval_loss=status.metrics.eval_loss if status.metrics else None,
        sla_passed=None if status.sla is None else status.sla == "Passed",
        run=status.artifacts.run if status.artifacts else None,
        finished_at=(ended.last_transition_time if finished and ended else None) or at,
    )


def _invalid(s: Situation, obs: Observation, at: str) -> Decision:
    message = "invalid spec: " + "; ".join(str(problem) for problem in s.problems)
    fields: dict[str, Any] = {}
    delete: tuple[str, ...] = ()
    if s.phase is None:
        fields = _new_run_fields(s, obs, at)
        delete = s.superseded
    return _move(s, at, "Failed", "InvalidSpec", message, fields, warning=True, delete=delete)


def _start_training(s: Situation, obs: Observation, at: str) -> Decision:
    if obs.dataset_missing:
        uri = s.resolved.dataset.uri
        return _fail(s, at, "DatasetNotFound", f"spec.dataset.uri: {uri} does not exist")
    job = child_name(s.name, s.generation, "train")
    return _move(
        s,
        at,
        "Pending",
        "JobCreated",
        f"created training Job {job}; waiting for its pod to start",
        create="train",
    )


def _training(s: Situation, obs: Observation, at: str) -> Decision:
    """Pending until the pod runs; then Training, also while a failed pod is retried."""
    assert s.train is not None
    fields = {
        "progress": _wire(with_percent(obs.progress)) if obs.progress else None,
        "artifacts": _wire(_artifacts(s, obs)),
    }
    started = s.train.ready or obs.progress is not None or s.phase == "Training"
    if s.phase == ("Training" if started else "Pending"):
        return _refresh(s, fields)
    if started:
        message = f"training pod of Job {s.train.name} is running"
        return _move(s, at, "Training", "TrainingStarted", message, fields)
    message = f"created training Job {s.train.name}; waiting for its pod to start"
    return _move(s, at, "Pending", "JobCreated", message, fields)


def _trained(s: Situation, obs: Observation, at: str) -> Decision:
    job = child_name(s.name, s.generation, "benchmark")
    loss = obs.metrics.eval_loss if obs.metrics else None
    done = "training finished" + ("" if loss is None else f" (eval loss {gate.loss(loss)})")
    return _move(
        s,
        at,
        "Benchmarking",
        "BenchmarkStarted",
        f"{done}; created benchmark Job {job}",
        _trained_fields(s, obs),
        create="benchmark",
    )


def _trained_fields(s: Situation, obs: Observation) -> dict[str, Any]:
    artifacts = _artifacts(s, obs).model_copy(update={"adapter": f"{obs.run_uri}/adapter"})
    fields: dict[str, Any] = {"metrics": _wire(obs.metrics), "artifacts": _wire(artifacts)}
    if obs.progress is not None:
        fields["progress"] = _wire(with_percent(obs.progress))
    return fields


def _benchmarking(s: Situation, obs: Observation, at: str) -> Decision:
    assert s.bench is not None
    if s.phase == "Benchmarking":
        return NOTHING
    # The benchmark Job exists but the status was not written (the operator stopped between).
    return _move(
        s,
        at,
        "Benchmarking",
        "BenchmarkStarted",
        f"training finished; benchmark Job {s.bench.name} is running",
        _trained_fields(s, obs),
    )


def _gate(s: Situation, obs: Observation, at: str) -> Decision:
    if obs.report is None:
        return _fail(
            s,
            at,
            "ReportMissing",
            "benchmark failed: the Job succeeded but report/benchmark.json is missing",
        )
    spec = s.resolved
    verdict = gate.decide(obs.report, spec, obs.metrics, obs.champion, version=s.paths.version)
    artifacts = _artifacts(s, obs).model_copy(update={"report": f"{obs.run_uri}/report/index.html"})
    fields = {
        "benchmark": _wire(obs.report),
        "sla": "Passed" if verdict.passed else "Failed",
        "artifacts": _wire(artifacts),
        "metrics": _wire(obs.metrics),
    }
    if not verdict.passed:
        return _move(
            s, at, "Rejected", verdict.reason, f"rejected: {verdict.message}", fields, warning=True
        )
    if spec.promotion.policy == "manual" and not s.approved:
        message = (
            f"{verdict.message}; waiting for approval: annotate it with {APPROVE_ANNOTATION}=true"
        )
        return _move(s, at, "AwaitingApproval", "AwaitingApproval", message, fields)
    return _promote(s, obs, at, verdict.message, fields)


def _promote(
    s: Situation, obs: Observation, at: str, why: str, fields: dict[str, Any] | None = None
) -> Decision:
    if obs.promotion_error is not None:
        return _fail(s, at, "PromotionFailed", f"promote failed: {obs.promotion_error}")
    if obs.promoted_uri is None:
        return Decision(promote=True)
    return _move(
        s,
        at,
        "Promoted",
        "Promoted",
        f"{why}; promoted to {obs.promoted_uri}",
        {**(fields or {}), "promotedModel": obs.promoted_uri},
    )


def _job_failed(s: Situation, obs: Observation, at: str, stage: Stage, job: JobState) -> Decision:
    """Why a stage failed, best source first: the stage's own error.json, then the pod's
    termination message, then the Job's Failed condition (backoff limit, deadline)."""
    error = obs.error if obs.error and obs.error.stage in ERROR_STAGES[stage] else None
    if error is not None:
        reason, detail = _reason(error.reason), error.message
    else:
        reason = job.reason
        detail = obs.termination_message or job.message or f"Job {job.name} failed"
    fields: dict[str, Any] = {}
    if obs.progress is not None:
        fields["progress"] = _wire(with_percent(obs.progress))
    return _fail(s, at, reason, f"{stage} failed: {detail}", fields)


def _fail(
    s: Situation, at: str, reason: str, message: str, fields: dict[str, Any] | None = None
) -> Decision:
    return _move(s, at, "Failed", reason, message, fields or {}, warning=True)


def _artifacts(s: Situation, obs: Observation) -> Artifacts:
    current = s.status.artifacts or Artifacts()
    return current.model_copy(
        update={
            "run": obs.run_uri,
            "last_checkpoint": obs.last_checkpoint or current.last_checkpoint,
        }
    )


# ------------------------------------------------------------------ status patches


def _move(
    s: Situation,
    at: str,
    phase: Phase,
    reason: str,
    message: str,
    fields: dict[str, Any] | None = None,
    *,
    warning: bool = False,
    events: Sequence[Event] | None = None,
    create: Stage | None = None,
    delete: tuple[str, ...] = (),
    requeue: bool = False,
) -> Decision:
    """A phase transition: the new phase with its conditions and an Event."""
    message = _cap(message)
    conditions = phase_conditions(phase, reason, message, s.generation, s.status.conditions, at)
    patch = {
        **(fields or {}),
        "phase": phase,
        "observedGeneration": s.generation,
        "message": message,
        "conditions": [c.to_wire() for c in conditions],
    }
    if events is None:
        events = [Event("Warning" if warning else "Normal", reason, message)]
    return Decision(
        status=changes(s.raw_status, patch),
        events=tuple(events),
        create=create,
        delete=delete,
        requeue=requeue,
    )


def _refresh(s: Situation, fields: dict[str, Any]) -> Decision:
    """No transition: only fields that changed (progress, checkpoints), no Event."""
    return Decision(status=changes(s.raw_status, fields))


def phase_conditions(
    phase: Phase,
    reason: str,
    message: str,
    generation: int,
    previous: Sequence[Condition],
    at: str,
) -> list[Condition]:
    """kstatus conditions: Ready (True once promoted), Reconciling (True while a stage is
    running), Stalled (True when the run ended Failed or Rejected). A transition time moves
    only when its condition's status changes."""
    wanted = {
        "Ready": phase == "Promoted",
        "Reconciling": phase in ACTIVE_PHASES,
        "Stalled": phase in ("Failed", "Rejected"),
    }
    before = {c.type: c for c in previous}
    conditions = []
    for kind, true in wanted.items():
        status: Literal["True", "False"] = "True" if true else "False"
        old = before.get(kind)
        since = old.last_transition_time if old is not None and old.status == status else None
        conditions.append(
            Condition(
                type=kind,
                status=status,
                reason=reason,
                message=message,
                observed_generation=generation,
                last_transition_time=since or at,
            )
        )
    return conditions


def changes(current: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of a merge patch that change `current` (None removes a key)."""
    return {
        key: value for key, value in patch.items() if _pruned(value) != _pruned(current.get(key))
    }


def _pruned(value: Any) -> Any:
    """A JSON value without None entries: how the API server stores a merge-patched value."""
    if isinstance(value, Mapping):
        return {k: _pruned(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_pruned(v) for v in value]
    return value


def _wire(model: BaseModel | None) -> dict[str, Any] | None:
    """A status section in full, unset fields as null so a merge patch clears stale ones."""
    return None if model is None else model.model_dump(by_alias=True, mode="json")


def _reason(text: str) -> str:
    """A condition reason must be CamelCase letters and digits; error.json is not trusted."""
    return re.sub(r"[^A-Za-z0-9]", "", text)[:64] or "StageFailed"


def _cap(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."
