"""The lifecycle of a FineTuneJob run: the one place that knows what happens next.

Given what an executor observed (the job's validated spec, its recorded status, the state
of its two stages, and the run files the current step needs), `decide` returns the next
actions and the new status. Two executors carry decisions out:

- the operator (finetune_operator.controller): a stage is a batch/v1 Job, the status lives
  in the FineTuneJob's .status, an Event is a Kubernetes Event;
- `finetune run` (finetune_cli.local): a stage is a child process, the status lives in the
  run's status.json, an Event is a console line.

Both therefore set the same phases, conditions, reasons and messages for the same
situation. A decision depends only on what was observed, never on an executor's memory,
so an executor restarted at any moment resumes where the run stands; stage names are
deterministic, so asking for a stage that already exists is harmless.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import Enum
from functools import cached_property
from typing import Any, Literal, cast

from pydantic import BaseModel

from finetune_core import gate, gpu_memory
from finetune_core.api import (
    ACTIVE_PHASES,
    SETTLED_PHASES,
    TERMINAL_PHASES,
    Artifacts,
    BenchmarkReport,
    Condition,
    EvaluationReport,
    EvaluationSummary,
    FineTuneJobStatus,
    Metrics,
    Phase,
    Progress,
    Reason,
    ResolvedSpec,
    RunRecord,
)
from finetune_core.clock import timestamp
from finetune_core.cost import Price, StageTime, run_cost
from finetune_core.layout import AliasPaths, CurrentAlias, ErrorReport, RunPaths, alias_of
from finetune_core.manifest import Problem

StageName = Literal["train", "benchmark"]
STAGES: tuple[StageName, ...] = ("train", "benchmark")
APPROVE_ANNOTATION = "finetune.dev/approve"
REBENCHMARK_ANNOTATION = "finetune.dev/rebenchmark"
REBENCHMARKABLE: frozenset[str] = frozenset({"Rejected", "AwaitingApproval"})
RUN_HISTORY = 5
READY_PHASES = frozenset({"Promoted", "Passed"})
"""The run did what it was asked: promoted, or (promotion.policy: none) met its gate."""
MAX_MESSAGE = 2000
MAX_STAGE_NAME = 63  # the Job controller copies a Job's name into a label value on its pods
_SUFFIX: dict[StageName, str] = {"train": "train", "benchmark": "bench"}
# Which error.json stages explain a failed stage: the trainer checks its input ("validate")
# before it trains. A stale error.json from a retried, then successful, pod is ignored.
ERROR_STAGES: dict[StageName, frozenset[str]] = {
    "train": frozenset({"validate", "train"}),
    "benchmark": frozenset({"benchmark"}),
}


def stage_name(name: str, generation: int, stage: StageName, round: int = 1) -> str:
    """`<name>-g<generation>-train` or `-bench` (`-bench-r<k>` for re-benchmark round k >= 2):
    the same stage for the same run, always (the Job's name in a cluster, the process's name
    locally)."""
    full = f"{name}-g{generation}-{_SUFFIX[stage]}"
    if stage == "benchmark" and round > 1:
        full += f"-r{round}"
    if len(full) > MAX_STAGE_NAME:
        raise ValueError(f"stage name {full!r} is longer than {MAX_STAGE_NAME} characters")
    return full


@dataclass(frozen=True)
class StageState:
    """One stage as far as the run cares: running (ready once its process or pod runs),
    succeeded or failed (and why)."""

    name: str
    outcome: Literal["running", "succeeded", "failed"]
    ready: bool = False
    reason: str = ""
    message: str = ""
    stuck: bool = False  # it never started (no image, unschedulable): delete it on failing
    queue: str | None = None  # suspended, waiting for admission to this queue (Kueue)
    started_at: str | None = None  # when it started running (RFC 3339), for its GPU-hours
    finished_at: str | None = None  # when it ended


class Step(Enum):
    """Where a run stands, from the recorded status and the observed stages."""

    INVALID = "invalid"  # the spec does not validate
    NEW_RUN = "new-run"  # metadata.generation is not the one the status describes
    SETTLED = "settled"  # finished, or being deleted: nothing to do
    AWAITING_APPROVAL = "awaiting-approval"
    APPROVED = "approved"
    START_TRAINING = "start-training"
    TRAINING = "training"
    TRAINING_FAILED = "training-failed"
    TRAINED = "trained"
    TRAINING_STAGE_LOST = "training-stage-lost"
    BENCHMARKING = "benchmarking"
    BENCHMARK_FAILED = "benchmark-failed"
    BENCHMARKED = "benchmarked"
    BENCHMARK_STAGE_LOST = "benchmark-stage-lost"
    REBENCHMARK = "rebenchmark"  # a settled run asked to be measured again
    REBENCHMARK_REFUSED = "rebenchmark-refused"  # asked, but not in a form or phase that can


@dataclass(frozen=True)
class RunState:
    """A job, its validated spec (or the problems with it), its recorded status and the state
    of this generation's stages, as an executor observed them."""

    namespace: str
    name: str
    generation: int
    spec: ResolvedSpec | None  # None when the spec is invalid
    gpus: int = 0
    problems: tuple[Problem, ...] = ()
    raw_status: Mapping[str, Any] = field(default_factory=dict)
    approval: str | None = None  # the approve annotation's value, if any
    deleting: bool = False
    train: StageState | None = None
    bench: StageState | None = None
    superseded: tuple[str, ...] = ()  # unfinished stages of other generations
    leftovers: tuple[str, ...] = ()  # stages of a deleted predecessor of the same name
    uid: str | None = None  # the object's identity (metadata.uid; a local job's own id)
    gpu_capacity_gib: float | None = None  # one GPU's memory, where the run needs a GPU
    rebenchmark: str | None = None  # the rebenchmark annotation's value, if any
    price: Price = field(default_factory=Price)  # of one GPU-hour
    keep_generations: int | None = None  # the executor's retention default

    @cached_property
    def status(self) -> FineTuneJobStatus:
        """Parsed once per state (the state is frozen): a reconcile pass asks often."""
        return parse_status(self.raw_status)

    @property
    def phase(self) -> str | None:
        """The phase of this generation's run; None before the run is recorded."""
        status = self.status
        if status.observed_generation != self.generation:
            return None
        return status.phase

    @property
    def approved(self) -> bool:
        """An approval names the generation it approves: a stale one approves nothing."""
        return self.approval == str(self.generation)

    @property
    def rebenchmark_pending(self) -> bool:
        """A rebenchmark request not served yet (each value starts one round at most)."""
        return self.rebenchmark is not None and self.rebenchmark != (
            self.status.rebenchmark_request
        )

    @property
    def rebenchmark_valid(self) -> bool:
        """A request names the generation it re-benchmarks: "<generation>", or
        "<generation>/<anything>" to ask again once a value was served."""
        value, generation = self.rebenchmark or "", str(self.generation)
        return value == generation or value.startswith(generation + "/")

    @property
    def benchmark_round(self) -> int:
        """The benchmark round of this generation's run: 1, then 2, 3, ... per re-benchmark."""
        status = self.status
        if status.observed_generation != self.generation:
            return 1
        return status.benchmark_round or 1

    @property
    def resolved(self) -> ResolvedSpec:
        assert self.spec is not None
        return self.spec

    @property
    def paths(self) -> RunPaths:
        return RunPaths(self.namespace, self.name, self.generation)

    def stage(self, stage: StageName) -> StageState | None:
        return self.train if stage == "train" else self.bench

    def with_stage(self, stage: StageName, state: StageState) -> RunState:
        return replace(self, train=state) if stage == "train" else replace(self, bench=state)

    @property
    def settled(self) -> bool:
        """Nothing can change without a new event (spec edit, approval): no need to poll."""
        return self.step in (Step.SETTLED, Step.AWAITING_APPROVAL)

    @property
    def step(self) -> Step:
        phase = self.phase
        if not self.deleting and phase in SETTLED_PHASES and self.rebenchmark_pending:
            if self.rebenchmark_valid and phase in REBENCHMARKABLE and not self.problems:
                return Step.REBENCHMARK
            return Step.REBENCHMARK_REFUSED
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
        # The status moves to Benchmarking only after the benchmark stage was started.
        if phase == "Benchmarking":
            return Step.BENCHMARK_STAGE_LOST
        if self.train is not None:
            return {
                "running": Step.TRAINING,
                "succeeded": Step.TRAINED,
                "failed": Step.TRAINING_FAILED,
            }[self.train.outcome]
        if phase in ("Pending", "Training"):
            return Step.TRAINING_STAGE_LOST
        return Step.START_TRAINING


def parse_status(raw: Mapping[str, Any]) -> FineTuneJobStatus:
    """A recorded status; one edited beyond repair starts the record afresh."""
    try:
        return FineTuneJobStatus.model_validate(raw)
    except ValueError:
        return FineTuneJobStatus()


# ------------------------------------------------------------------ observation


@dataclass(frozen=True)
class Reads:
    """What an executor should read before deciding, for the run's current step."""

    progress: bool = False
    metrics: bool = False
    report: bool = False
    evaluation: bool = False  # report/evaluation.json (review scores, bits per byte)
    error: bool = False
    checkpoints: bool = False
    champion: AliasPaths | None = None  # the alias whose current version to read
    failed_stage: StageName | None = None  # whose own last words (pod messages) to read
    dataset: str | None = None  # s3:// URI whose existence to check before training
    # A stage whose Job is gone (ttlSecondsAfterFinished, or deleted): did it leave its
    # result (this benchmark round's report)? Then it finished, and the run goes on.
    finished: StageName | None = None
    round: int = 1


def reads(state: RunState) -> Reads:
    match state.step:
        case Step.START_TRAINING if state.resolved.dataset.uri.startswith("s3://"):
            return Reads(dataset=state.resolved.dataset.uri)
        case Step.TRAINING:
            return Reads(progress=True, checkpoints=True)
        case Step.TRAINED:
            return Reads(progress=True, metrics=True, checkpoints=True)
        case Step.TRAINING_FAILED:
            return Reads(progress=True, error=True, failed_stage="train")
        case Step.BENCHMARKING if state.phase != "Benchmarking":
            return Reads(progress=True, metrics=True, checkpoints=True)
        case Step.BENCHMARKED | Step.APPROVED:
            alias = alias_of(state.resolved, state.namespace)
            return Reads(metrics=True, report=True, evaluation=True, champion=alias)
        case Step.BENCHMARK_FAILED:
            return Reads(error=True, failed_stage="benchmark")
        case Step.TRAINING_STAGE_LOST:
            return Reads(progress=True, metrics=True, checkpoints=True, finished="train")
        case Step.BENCHMARK_STAGE_LOST:
            alias = alias_of(state.resolved, state.namespace)
            return Reads(
                metrics=True,
                report=True,
                champion=alias,
                finished="benchmark",
                round=state.benchmark_round,
            )
    return Reads()


@dataclass(frozen=True)
class InvalidRunFile:
    """A stage's result file that is present but unusable (e.g. a NaN loss)."""

    name: str  # metrics.json, benchmark.json
    message: str
    non_finite: bool = False


@dataclass(frozen=True)
class RunFiles:
    """What `reads` asked for, as found in the store."""

    progress: Progress | None = None
    metrics: Metrics | None = None
    report: BenchmarkReport | None = None
    evaluation: EvaluationReport | None = None
    error: ErrorReport | None = None
    champion: CurrentAlias | None = None
    last_checkpoint: str | None = None  # URI
    dataset_missing: bool = False
    invalid: tuple[InvalidRunFile, ...] = ()
    finished: bool = False  # the stage `Reads.finished` names left its result


@dataclass(frozen=True)
class Observation:
    """The run's state, its files, and the outcome of any promotion just carried out."""

    state: RunState
    run_uri: str = ""  # the store's URI of this generation's run directory
    files: RunFiles = field(default_factory=RunFiles)
    stage_message: str | None = None  # the failed stage's own last words (pod message)
    promoted_uri: str | None = None  # set once the executor has promoted the run
    promotion_error: str | None = None
    promotion_rejected: gate.Verdict | None = None  # gated again at the write: it lost
    create_refused: str | None = None  # the API refused to create the stage, for good


def with_percent(progress: Progress) -> Progress:
    if progress.step is None or not progress.total_steps:
        return progress
    percent = max(0, min(100, progress.step * 100 // progress.total_steps))
    return progress.model_copy(update={"percent": percent})


# ------------------------------------------------------------------ decisions


@dataclass(frozen=True)
class Event:
    """Something a person should hear of: a Kubernetes Event, or a console line."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Decision:
    """What to do, then what to record. `status` is a merge patch of the status (empty: no
    change); `requeue` asks for another observe-decide pass right away."""

    status: dict[str, Any] = field(default_factory=dict)
    events: tuple[Event, ...] = ()
    create: StageName | None = None
    round: int = 1  # the benchmark round `create` starts
    delete: tuple[str, ...] = ()
    promote: bool = False
    requeue: bool = False
    prune: Prune | None = None  # settled: drop older generations' run directories

    @property
    def acts(self) -> bool:
        """Whether carrying it out does more than record a status and post Events."""
        return bool(self.create or self.delete or self.promote or self.prune)


@dataclass(frozen=True)
class Prune:
    """Keep the newest `keep` superseded generations' run directories; never the current
    one, nor those in `protected` (promoted, by the status; the executor adds those the
    alias names)."""

    keep: int
    protected: frozenset[int] = frozenset()


NOTHING = Decision()


def decide(obs: Observation, now: datetime) -> Decision:
    """The next step of the run, given everything observed. Stages that are not this run's
    (a superseded generation's, a deleted predecessor's) are deleted on every pass until
    they are gone; a stage of ours is never created while a predecessor's of the same name
    is still there."""
    s = obs.state
    if obs.create_refused is not None:
        message = f"the stage could not be created: {obs.create_refused}"
        return _fail(s, timestamp(now), Reason.JOB_REJECTED, message)
    decision = _decide(s, obs, timestamp(now))
    if decision.create is not None:
        blocking = stage_name(s.name, s.generation, decision.create, decision.round)
        if blocking in s.leftovers:
            decision = Decision()  # the next pass, once it is gone, creates ours
    stale = tuple(name for name in s.superseded + s.leftovers if name not in decision.delete)
    if stale:
        decision = replace(decision, delete=decision.delete + stale)
    moving = not s.settled and s.step is not Step.REBENCHMARK_REFUSED
    if moving and (decision.status or "cost" in s.raw_status):
        decision = _with_cost(s, obs, decision)
    return _with_prune(s, decision)


def _with_cost(s: RunState, obs: Observation, decision: Decision) -> Decision:
    """The decision's status patch with status.cost brought up to date, if it moved. It
    moves only when its inputs do (a stage ends, a start time or a progress report arrives),
    and those come with a write of their own, so it rarely adds one; a status without a cost
    yet (written by an older operator) gets one with the run's next write. A settled run's
    cost does not move."""
    after = merge_patch(s.raw_status, decision.status)
    cost = parse_status(after).cost if after.get("cost") is not None else None
    stages = [
        StageTime(
            state.name,
            training=stage == "train",
            finished=state.outcome != "running",
            started_at=state.started_at,
            finished_at=state.finished_at,
        )
        for stage in STAGES
        if (state := s.stage(stage)) is not None
    ]
    progress = obs.files.progress if after.get("phase") == "Training" else None
    recorded = cost.stages if cost is not None else {}
    wire = _wire(run_cost(recorded, stages, s.gpus, s.price, progress))
    if without_nulls(wire) == without_nulls(after.get("cost")):
        return decision
    return replace(decision, status={**decision.status, "cost": wire})


def _with_prune(s: RunState, decision: Decision) -> Decision:
    """A run that settles now lets go of older generations' run directories, if the spec or
    the executor says how many to keep."""
    if decision.status.get("phase") not in SETTLED_PHASES or s.spec is None:
        return decision
    keep = s.spec.retention.keep_generations
    keep = s.keep_generations if keep is None else keep
    if keep is None:
        return decision
    status = parse_status(merge_patch(s.raw_status, decision.status))
    protected = {r.generation for r in status.runs if r.phase == "Promoted"}
    if status.phase == "Promoted":
        protected.add(s.generation)
    return replace(decision, prune=Prune(keep, frozenset(protected)))


def _decide(s: RunState, obs: Observation, at: str) -> Decision:
    match s.step:
        case Step.SETTLED:
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
            return _stage_failed(s, obs, at, "train", s.train)
        case Step.BENCHMARKING:
            return _benchmarking(s, obs, at)
        case Step.BENCHMARKED:
            return _gate(s, obs, at)
        case Step.BENCHMARK_FAILED:
            assert s.bench is not None
            return _stage_failed(s, obs, at, "benchmark", s.bench)
        case Step.APPROVED:
            return _gate(s, obs, at)
        case Step.AWAITING_APPROVAL if s.approval is not None:
            return _invalid_approval(s, at)
        case Step.AWAITING_APPROVAL:
            return NOTHING
        case Step.REBENCHMARK:
            return _rebenchmark(s, at)
        case Step.REBENCHMARK_REFUSED:
            return _rebenchmark_refused(s)
        case Step.TRAINING_STAGE_LOST | Step.BENCHMARK_STAGE_LOST:
            stage: StageName = "train" if s.step is Step.TRAINING_STAGE_LOST else "benchmark"
            job = stage_name(s.name, s.generation, stage, s.benchmark_round)
            if obs.files.finished:
                # Its Job ended and was removed (ttlSecondsAfterFinished) before we saw it
                # end: its result says it succeeded, so go on from there.
                return _decide(s.with_stage(stage, StageState(job, "succeeded")), obs, at)
            return _fail(
                s,
                at,
                Reason.JOB_DELETED,
                f"{stage} failed: Job {job} was deleted before it finished",
            )
    raise AssertionError(s.step)  # pragma: no cover


def retrying(state: RunState, now: datetime, message: str) -> Decision:
    """A run that keeps meeting a transient fault (the API server or the store down, a
    timeout): the phase stays, and the Reconciling condition says what is being retried."""
    status = state.status
    if state.phase not in ACTIVE_PHASES:
        return NOTHING
    conditions = [
        c.model_copy(update={"reason": Reason.RETRYING, "message": _cap(message)})
        if c.type == "Reconciling"
        else c
        for c in status.conditions
    ]
    return Decision(
        status=changes(state.raw_status, {"conditions": [c.to_wire() for c in conditions]})
    )


def resume(state: RunState, now: datetime, why: str) -> Decision:
    """Take an unfinished or failed run up again (a local re-run): back to Validating, from
    where the stages that have not succeeded run again."""
    return _move(state, timestamp(now), "Validating", Reason.RESUMED, why, requeue=True)


def interrupted(
    state: RunState, now: datetime, message: str, progress: Progress | None
) -> Decision:
    """The executor stopped a stage on request (Ctrl-C): the phase stays, the message says
    how to go on."""
    phase = cast(Phase, state.phase or "Pending")
    assert phase not in SETTLED_PHASES
    fields = {"progress": _wire(with_percent(progress))} if progress else {}
    return _move(state, timestamp(now), phase, Reason.INTERRUPTED, message, fields, warning=True)


def _invalid_approval(s: RunState, at: str) -> Decision:
    """An approve annotation that names another generation (or says "true") approves
    nothing: say so once, and keep waiting."""
    message = (
        f"{APPROVE_ANNOTATION}={s.approval!r} approves nothing: the annotation's value must be "
        f'the generation it approves, "{s.generation}"; still waiting for approval'
    )
    return _move(s, at, "AwaitingApproval", Reason.INVALID_APPROVAL, message, warning=True)


def _rebenchmark(s: RunState, at: str) -> Decision:
    """Measure the same adapter once more, in a new benchmark stage, then gate again."""
    round = s.benchmark_round + 1
    try:
        job = stage_name(s.name, s.generation, "benchmark", round)
    except ValueError as too_long:
        return _rebenchmark_refused(s, f"{too_long}: rename the job to re-benchmark it")
    message = (
        f"re-benchmark requested ({REBENCHMARK_ANNOTATION}={s.rebenchmark!r}); created "
        f"benchmark Job {job} (round {round}); the adapter is not retrained"
    )
    fields = {"benchmarkRound": round, "rebenchmarkRequest": s.rebenchmark}
    return _move(
        s,
        at,
        "Benchmarking",
        Reason.REBENCHMARK_STARTED,
        message,
        fields,
        create="benchmark",
        round=round,
    )


def _rebenchmark_refused(s: RunState, why: str | None = None) -> Decision:
    """A request that cannot be served: say why once (the value is recorded as served, so
    the next pass does not say it again); the phase and its message stay."""
    value = f"{REBENCHMARK_ANNOTATION}={s.rebenchmark!r}"
    if why is not None:
        message = f"{value} is refused: {why}"
    elif not s.rebenchmark_valid:
        message = (
            f"{value} asks for nothing: the annotation's value must be the generation to "
            f're-benchmark, "{s.generation}" (or "{s.generation}/<anything>" to ask again)'
        )
    elif s.phase == "Promoted":
        message = (
            f"{value} is refused: generation {s.generation} is Promoted, and a promoted run is "
            "not re-gated; retrain it (change the spec) or roll back"
        )
    else:
        message = (
            f"{value} is refused: generation {s.generation} is {s.phase}; only a Rejected or "
            "AwaitingApproval run is re-benchmarked"
        )
    return Decision(
        status=changes(s.raw_status, {"rebenchmarkRequest": s.rebenchmark}),
        events=(Event("Warning", Reason.INVALID_REBENCHMARK, _cap(message)),),
    )


def _result_problem(s: RunState, obs: Observation, at: str, name: str) -> Decision | None:
    """A stage succeeded but left a result the run cannot go on from: fail, naming it."""
    for invalid in obs.files.invalid:
        if invalid.name == name:
            reason = Reason.NON_FINITE_LOSS if invalid.non_finite else Reason.INVALID_RUN_FILE
            return _fail(s, at, reason, invalid.message)
    return None


def _new_run(s: RunState, obs: Observation, at: str) -> Decision:
    """A new generation: record the previous run, stop its stages, start validating."""
    spec = s.resolved
    message = f"generation {s.generation}: fine-tuning {spec.model_id} on {spec.dataset.uri}"
    patch = {**_new_run_fields(s, obs, at), "model": spec.model_id}
    events = [Event("Normal", Reason.RUN_STARTED, message)]
    if s.gpu_capacity_gib is not None:
        shape = gpu_memory.shape_of(spec)
        if shape is None:
            why = f"the shape of {spec.model_id} is not known: the GPU memory preflight is skipped"
            events.append(Event("Warning", Reason.NO_MEMORY_ESTIMATE, why))
        else:
            patch["gpuMemoryGib"] = round(
                gpu_memory.estimate(spec, shape).total / gpu_memory.GIB, 1
            )
    if s.gpus > 0 and spec.lora_dropout != 0:
        events.append(
            Event(
                "Normal",
                Reason.SLOW_LORA_PATH,
                f"lora.dropout is {spec.lora_dropout}: "
                "unsloth takes its slower path (0 enables its fast kernels)",
            )
        )
    return _move(
        s,
        at,
        "Validating",
        Reason.RUN_STARTED,
        message,
        patch,
        events=events,
        requeue=True,
    )


def _new_run_fields(s: RunState, obs: Observation, at: str) -> dict[str, Any]:
    """Clear what described the previous generation's run and archive it in status.runs."""
    status = s.status
    previous = _record(status, at)
    runs = [previous, *status.runs] if previous is not None else status.runs
    return {
        "startedAt": at,
        "runs": [r.to_wire() for r in runs[:RUN_HISTORY]],
        "model": None,
        "progress": None,
        "metrics": None,
        "benchmark": None,
        "evaluation": None,
        "artifacts": _wire(Artifacts(run=obs.run_uri)),
        "promotedModel": None,
        "sla": None,
        "benchmarkRound": None,
        "cost": None,
    }


def _record(status: FineTuneJobStatus, at: str) -> RunRecord | None:
    if status.observed_generation is None or status.phase is None:
        return None
    finished = status.phase in TERMINAL_PHASES
    # A finished run ended when Ready (promoted) or Stalled (failed, rejected) turned True.
    ending = "Ready" if status.phase in READY_PHASES else "Stalled"
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


def _invalid(s: RunState, obs: Observation, at: str) -> Decision:
    message = "invalid spec: " + "; ".join(str(problem) for problem in s.problems)
    fields = _new_run_fields(s, obs, at) if s.phase is None else {}
    return _move(s, at, "Failed", Reason.INVALID_SPEC, message, fields, warning=True)


def _too_big(s: RunState, at: str) -> Decision | None:
    """The run would not fit one GPU: fail before any pod is created, saying what to change."""
    shape = gpu_memory.shape_of(s.resolved)
    if s.gpu_capacity_gib is None or shape is None:
        return None
    need = gpu_memory.estimate(s.resolved, shape)
    capacity = s.gpu_capacity_gib * gpu_memory.GIB
    if need.total <= capacity:
        return None
    message = (
        f"the training run needs about {need.describe()}, more than one GPU's "
        f"{gpu_memory.gib(capacity)}: set model.loadIn4bit, or lower training.batchSize or "
        "model.maxSeqLength, or choose a smaller model"
    )
    return _fail(s, at, Reason.INSUFFICIENT_GPU_MEMORY, message)


def _start_training(s: RunState, obs: Observation, at: str) -> Decision:
    if (too_big := _too_big(s, at)) is not None:
        return too_big
    if obs.files.dataset_missing:
        uri = s.resolved.dataset.uri
        return _fail(s, at, Reason.DATASET_NOT_FOUND, f"spec.dataset.uri: {uri} does not exist")
    job = stage_name(s.name, s.generation, "train")
    return _move(
        s,
        at,
        "Pending",
        Reason.JOB_CREATED,
        f"created training Job {job}; waiting for its pod to start",
        create="train",
    )


def _queued(s: RunState, stage: StageState, at: str) -> Decision | None:
    """A stage suspended until its queue admits it: the phase its step implies, and the
    Reconciling condition saying which queue it waits in."""
    if stage.queue is None:
        return None
    phase: Phase = "Benchmarking" if stage is s.bench else "Pending"
    message = f"Job {stage.name} waits for admission to queue {stage.queue}"
    return _move(s, at, phase, Reason.QUEUED, message)


def _training(s: RunState, obs: Observation, at: str) -> Decision:
    """Pending until the stage runs; then Training, also while a failed pod is retried."""
    assert s.train is not None
    if (queued := _queued(s, s.train, at)) is not None:
        return queued
    progress = obs.files.progress
    fields = {
        "progress": _wire(with_percent(progress)) if progress else None,
        "artifacts": _wire(_artifacts(s, obs)),
    }
    started = s.train.ready or progress is not None or s.phase == "Training"
    if not started and Reason.QUEUED in _reasons(s):
        message = f"training Job {s.train.name} was admitted; waiting for its pod to start"
        return _move(s, at, "Pending", Reason.ADMITTED, message, fields)
    if s.phase == ("Training" if started else "Pending"):
        return _refresh(s, fields)
    if started:
        message = f"training pod of Job {s.train.name} is running"
        return _move(s, at, "Training", Reason.TRAINING_STARTED, message, fields)
    message = f"created training Job {s.train.name}; waiting for its pod to start"
    return _move(s, at, "Pending", Reason.JOB_CREATED, message, fields)


def _trained(s: RunState, obs: Observation, at: str) -> Decision:
    if (problem := _result_problem(s, obs, at, "metrics.json")) is not None:
        return problem
    # The round the status names: 1, or the re-benchmark round a local run was interrupted
    # in and now resumes.
    round = s.benchmark_round
    job = stage_name(s.name, s.generation, "benchmark", round)
    metrics = obs.files.metrics
    loss = metrics.eval_loss if metrics else None
    done = "training finished" + ("" if loss is None else f" (eval loss {gate.loss(loss)})")
    return _move(
        s,
        at,
        "Benchmarking",
        Reason.BENCHMARK_STARTED,
        f"{done}; created benchmark Job {job}",
        _trained_fields(s, obs),
        create="benchmark",
        round=round,
    )


def _trained_fields(s: RunState, obs: Observation) -> dict[str, Any]:
    artifacts = _artifacts(s, obs).model_copy(update={"adapter": f"{obs.run_uri}/adapter"})
    fields: dict[str, Any] = {"metrics": _wire(obs.files.metrics), "artifacts": _wire(artifacts)}
    if obs.files.progress is not None:
        fields["progress"] = _wire(with_percent(obs.files.progress))
    return fields


def _benchmarking(s: RunState, obs: Observation, at: str) -> Decision:
    assert s.bench is not None
    if (queued := _queued(s, s.bench, at)) is not None:
        return queued
    if s.phase == "Benchmarking":
        if Reason.QUEUED in _reasons(s):
            message = f"benchmark Job {s.bench.name} was admitted and runs"
            return _move(s, at, "Benchmarking", Reason.ADMITTED, message)
        return NOTHING
    # The benchmark stage exists but the status was not written (the executor stopped between).
    return _move(
        s,
        at,
        "Benchmarking",
        Reason.BENCHMARK_STARTED,
        f"training finished; benchmark Job {s.bench.name} is running",
        _trained_fields(s, obs),
    )


def _gate(s: RunState, obs: Observation, at: str) -> Decision:
    report, metrics = obs.files.report, obs.files.metrics
    for name in ("metrics.json", "benchmark.json"):
        if (problem := _result_problem(s, obs, at, name)) is not None:
            return problem
    if report is None:
        return _fail(
            s,
            at,
            Reason.REPORT_MISSING,
            "benchmark failed: the Job succeeded but report/benchmark.json is missing",
        )
    spec = s.resolved
    evaluation = obs.files.evaluation
    verdict = gate.judge(
        report,
        spec,
        metrics,
        obs.files.champion,
        version=s.paths.version,
        evaluation=evaluation,
    )
    artifacts = _artifacts(s, obs).model_copy(update={"report": f"{obs.run_uri}/report/index.html"})
    if "merged" in spec.promotion.export:
        artifacts = artifacts.model_copy(update={"merged": f"{obs.run_uri}/merged"})
    fields = {
        "benchmark": _wire(report),
        "sla": "Passed" if verdict.passed else "Failed",
        "artifacts": _wire(artifacts),
        "metrics": _wire(metrics),
        "evaluation": _wire(EvaluationSummary.of(evaluation) if evaluation else None),
    }
    if not verdict.passed:
        return _move(
            s, at, "Rejected", verdict.reason, f"rejected: {verdict.message}", fields, warning=True
        )
    if spec.promotion.policy == "none":
        message = f"{verdict.message}; not promoted (promotion.policy: none)"
        return _move(s, at, "Passed", Reason.PASSED, message, fields)
    if spec.promotion.policy != "manual":
        return _promote(s, obs, at, verdict.message, fields)
    if not s.approved:
        message = (
            f"{verdict.message}; waiting for approval of generation {s.generation}: annotate "
            f'it with {APPROVE_ANNOTATION}="{s.generation}" '
            f"(locally: finetune approve {s.namespace}/{s.name})"
        )
        return _move(s, at, "AwaitingApproval", Reason.AWAITING_APPROVAL, message, fields)
    why = f"{verdict.message}; generation {s.generation} approved"
    return _promote(s, obs, at, why, {**fields, "approvedGeneration": s.generation})


def _promote(
    s: RunState, obs: Observation, at: str, why: str, fields: dict[str, Any] | None = None
) -> Decision:
    if obs.promotion_rejected is not None:
        verdict = obs.promotion_rejected
        message = f"rejected at promotion: {verdict.message}"
        fields = {
            **(fields or {}),
            "sla": "Passed" if verdict.reason == Reason.NO_IMPROVEMENT else "Failed",
        }
        return _move(s, at, "Rejected", verdict.reason, message, fields, warning=True)
    if obs.promotion_error is not None:
        return _fail(s, at, Reason.PROMOTION_FAILED, f"promote failed: {obs.promotion_error}")
    if obs.promoted_uri is None:
        return Decision(promote=True)
    return _move(
        s,
        at,
        "Promoted",
        Reason.PROMOTED,
        f"{why}; promoted to {obs.promoted_uri}",
        {**(fields or {}), "promotedModel": obs.promoted_uri},
    )


def _stage_failed(
    s: RunState, obs: Observation, at: str, stage: StageName, state: StageState
) -> Decision:
    """Why a stage failed, best source first: the stage's own error.json, then its last words
    (a pod's termination message), then the stage's outcome (backoff limit, deadline, exit
    code)."""
    error = obs.files.error
    if error is not None and error.stage in ERROR_STAGES[stage]:
        reason, detail = _reason(error.reason), error.message
    else:
        reason = state.reason or Reason.JOB_FAILED
        detail = obs.stage_message or state.message or f"Job {state.name} failed"
    fields: dict[str, Any] = {}
    if obs.files.progress is not None:
        fields["progress"] = _wire(with_percent(obs.files.progress))
    failed = _fail(s, at, reason, f"{stage} failed: {detail}", fields)
    return replace(failed, delete=(state.name,)) if state.stuck else failed


def _fail(
    s: RunState, at: str, reason: str, message: str, fields: dict[str, Any] | None = None
) -> Decision:
    return _move(s, at, "Failed", reason, message, fields or {}, warning=True)


def _reasons(s: RunState) -> set[str]:
    return {c.reason for c in s.status.conditions}


def _artifacts(s: RunState, obs: Observation) -> Artifacts:
    current = s.status.artifacts or Artifacts()
    return current.model_copy(
        update={
            "run": obs.run_uri,
            "last_checkpoint": obs.files.last_checkpoint or current.last_checkpoint,
        }
    )


# ------------------------------------------------------------------ status patches


def _move(
    s: RunState,
    at: str,
    phase: Phase,
    reason: str,
    message: str,
    fields: dict[str, Any] | None = None,
    *,
    warning: bool = False,
    events: Sequence[Event] | None = None,
    create: StageName | None = None,
    round: int = 1,
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
    status = changes(s.raw_status, patch)
    if not status:
        events = ()  # nothing moved: it was said when it did
    elif events is None:
        events = [Event("Warning" if warning else "Normal", reason, message)]
    return Decision(
        status=status,
        events=tuple(events),
        create=create,
        round=round,
        delete=delete,
        requeue=requeue,
    )


def _refresh(s: RunState, fields: dict[str, Any]) -> Decision:
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
    """kstatus conditions: Ready (True once promoted, or passed with policy none),
    Reconciling (True while a stage is starting or running), Stalled (True when the run
    ended Failed or Rejected)."""
    wanted = {
        "Ready": phase in READY_PHASES,
        "Reconciling": phase in ACTIVE_PHASES,
        "Stalled": phase in ("Failed", "Rejected"),
    }
    return kstatus_conditions(wanted, reason, message, generation, previous, at)


def kstatus_conditions(
    wanted: Mapping[str, bool],
    reason: str,
    message: str,
    generation: int,
    previous: Sequence[Condition],
    at: str,
) -> list[Condition]:
    """Conditions of the given truth, all with this reason and message. A transition time
    moves only when its condition's status changes."""
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
        key: value
        for key, value in patch.items()
        if without_nulls(value) != without_nulls(current.get(key))
    }


def merge_patch(target: Any, patch: Any) -> Any:
    """`target` with a JSON merge patch (RFC 7386) applied, as the API server applies one to
    .status: objects merge key by key, null removes, anything else replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def merge_diff(before: Any, after: Any) -> Any:
    """The JSON merge patch that turns `before` into `after` (which holds no null): several
    patches applied one after another, written as one."""
    if not (isinstance(before, Mapping) and isinstance(after, Mapping)):
        return copy.deepcopy(after)
    patch: dict[str, Any] = {key: None for key in before if key not in after}
    for key, value in after.items():
        if key not in before or before[key] != value:
            patch[key] = merge_diff(before.get(key), value)
    return patch


def without_nulls(value: Any) -> Any:
    """A JSON value without null entries: a null field and an absent one say the same (the
    API server drops nulls from a merge-patched object)."""
    if isinstance(value, Mapping):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


def _wire(model: BaseModel | None) -> dict[str, Any] | None:
    """A status section in full, unset fields as null so a merge patch clears stale ones."""
    return None if model is None else model.model_dump(by_alias=True, mode="json")


def _reason(text: str) -> str:
    """A condition reason must be CamelCase letters and digits; error.json is not trusted."""
    return re.sub(r"[^A-Za-z0-9]", "", text)[:64] or Reason.STAGE_FAILED


def _cap(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."
