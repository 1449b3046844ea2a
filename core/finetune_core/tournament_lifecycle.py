"""The lifecycle of a FineTuneTournament: the one place that knows what happens next.

Given what an executor observed (the tournament's validated spec, its recorded status, its
child FineTuneJobs and the evaluation reports of the settled ones), `decide` returns the
children to create or update, the winner to promote, the report to write, the status patch
and the Events. The operator carries decisions out with FineTuneJobs in the cluster;
`finetune run tournament.yaml` with local runs. As for a FineTuneJob, a decision depends
only on what was observed: an executor restarted at any moment resumes where the
tournament stands, and a child that exists already is never created twice (each child
carries the tournament generation it was written for).

A generation goes Running (children start, at most maxParallel unsettled at once) ->
Selecting (every candidate settled; the report is written) -> Promoted, AwaitingApproval
(manual policy) or NoWinner (no candidate passed). Failed: the spec is invalid, or
promoting the winner failed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import cached_property
from typing import Any, Literal

from finetune_core import gate
from finetune_core.api import (
    TERMINAL_PHASES,
    Condition,
    EvaluationReport,
    FineTuneJobSpec,
    FineTuneJobStatus,
    ResolvedSpec,
)
from finetune_core.clock import timestamp
from finetune_core.layout import RunPaths, TournamentPaths
from finetune_core.lifecycle import (
    APPROVE_ANNOTATION,
    MAX_MESSAGE,
    Event,
    changes,
    kstatus_conditions,
    parse_status,
)
from finetune_core.manifest import InvalidManifest, Problem
from finetune_core.tournament import (
    TOURNAMENT_KIND,
    TOURNAMENT_SETTLED,
    FineTuneTournamentSpec,
    FineTuneTournamentStatus,
    LeaderboardEntry,
    Metric,
    ProfileLatency,
    TournamentPhase,
    TournamentRun,
    child_name,
    child_spec,
    parse_tournament,
)
from finetune_core.tournament_report import leaderboard_file, markdown, render_html

LABEL_TOURNAMENT = "finetune.dev/tournament"
LABEL_CANDIDATE = "finetune.dev/candidate"
LABEL_ROUND = "finetune.dev/tournament-generation"
WAITING = "Waiting"
RUN_HISTORY = 5


class TournamentReason:
    """Reasons of a tournament's conditions and Events (CamelCase)."""

    ROUND_STARTED = "RoundStarted"
    CANDIDATE_STARTED = "CandidateStarted"
    CANDIDATE_SETTLED = "CandidateSettled"
    SELECTING = "Selecting"
    NO_WINNER = "NoWinner"
    AWAITING_APPROVAL = "AwaitingApproval"
    INVALID_APPROVAL = "InvalidApproval"
    PROMOTED = "Promoted"
    PROMOTION_FAILED = "PromotionFailed"
    INVALID_SPEC = "InvalidSpec"


# ------------------------------------------------------------------ observation


@dataclass(frozen=True)
class ChildState:
    """One child FineTuneJob as the tournament cares: which tournament generation its spec
    was written for, its own generation and recorded status."""

    candidate: str
    job: str
    round: int | None
    generation: int
    raw_status: Mapping[str, Any] = field(default_factory=dict)

    @cached_property
    def status(self) -> FineTuneJobStatus:
        """Parsed once per state (the state is frozen): a reconcile pass asks often."""
        return parse_status(self.raw_status)

    @property
    def phase(self) -> str | None:
        """The phase of the child's current run; None before its run is recorded."""
        status = self.status
        return status.phase if status.observed_generation == self.generation else None

    @property
    def finished(self) -> bool:
        return self.phase in TERMINAL_PHASES


@dataclass(frozen=True)
class TournamentState:
    """A tournament, its validated spec (or the problems), its status and its children."""

    namespace: str
    name: str
    generation: int
    spec: FineTuneTournamentSpec | None
    children_specs: Mapping[str, FineTuneJobSpec] = field(default_factory=dict)
    problems: tuple[Problem, ...] = ()
    raw_status: Mapping[str, Any] = field(default_factory=dict)
    approval: str | None = None
    children: Mapping[str, ChildState] = field(default_factory=dict)  # by candidate
    strays: tuple[str, ...] = ()  # children of candidates no longer in the spec
    deleting: bool = False

    @property
    def status(self) -> FineTuneTournamentStatus:
        try:
            return FineTuneTournamentStatus.model_validate(self.raw_status)
        except ValueError:
            return FineTuneTournamentStatus()

    @property
    def phase(self) -> str | None:
        status = self.status
        return status.phase if status.observed_generation == self.generation else None

    @property
    def approved(self) -> bool:
        return self.approval == str(self.generation)

    @property
    def settled(self) -> bool:
        """Nothing changes without a spec edit or an approval: no need to poll."""
        phase = self.phase
        if phase == "AwaitingApproval":
            return not self.approved
        return self.deleting or phase in TOURNAMENT_SETTLED

    @property
    def paths(self) -> TournamentPaths:
        return TournamentPaths(self.namespace, self.name, self.generation)

    def current(self, candidate: str) -> ChildState | None:
        """The candidate's child, when its spec was written for this generation."""
        child = self.children.get(candidate)
        return child if child is not None and child.round == self.generation else None


def evaluations_to_read(state: TournamentState) -> dict[str, RunPaths]:
    """The run directories whose report/evaluation.json the decision needs: every child of
    this generation that finished."""
    wanted = {}
    for name, child in state.children.items():
        if child.round == state.generation and child.finished:
            wanted[name] = RunPaths(state.namespace, child.job, child.generation)
    return wanted


@dataclass(frozen=True)
class TournamentObservation:
    state: TournamentState
    evaluations: Mapping[str, EvaluationReport | None] = field(default_factory=dict)
    report_uri: str | None = None  # where the HTML report of this generation is (a URI)
    promoted_uri: str | None = None
    promotion_error: str | None = None
    promotion_rejected: gate.Verdict | None = None


# ------------------------------------------------------------------ decisions


@dataclass(frozen=True)
class ChildPlan:
    """Create the candidate's FineTuneJob, or (update) rewrite its spec for this generation."""

    candidate: str
    job: str
    spec: dict[str, Any]
    round: int
    update: bool = False

    def labels(self, tournament: str) -> dict[str, str]:
        return {
            LABEL_TOURNAMENT: tournament,
            LABEL_CANDIDATE: self.candidate,
            LABEL_ROUND: str(self.round),
        }


@dataclass(frozen=True)
class PromotionPlan:
    """Promote the winner's run under the tournament's version name, with the leaderboard
    in its model card (finetune_core.promotion.promote)."""

    candidate: str
    run: RunPaths
    spec: ResolvedSpec
    version: str
    card: str


@dataclass(frozen=True)
class ReportPlan:
    """The files of the tournament's report: key -> (bytes, content type)."""

    files: dict[str, tuple[bytes, str]]
    uri: str | None = None  # the HTML report's URI, for status.report


@dataclass(frozen=True)
class TournamentDecision:
    status: dict[str, Any] = field(default_factory=dict)
    events: tuple[Event, ...] = ()
    children: tuple[ChildPlan, ...] = ()
    delete: tuple[str, ...] = ()
    promote: PromotionPlan | None = None
    report: ReportPlan | None = None
    requeue: bool = False


NOTHING = TournamentDecision()


def decide(obs: TournamentObservation, now: datetime) -> TournamentDecision:
    """The tournament's next step. Children of candidates removed from the spec are
    deleted on every pass until they are gone."""
    s, at = obs.state, timestamp(now)
    decision = _decide(s, obs, at)
    if s.strays and not s.deleting:
        decision = replace(decision, delete=decision.delete + s.strays)
    return decision


def _decide(s: TournamentState, obs: TournamentObservation, at: str) -> TournamentDecision:
    phase = s.phase
    if s.deleting or phase in TOURNAMENT_SETTLED:
        return NOTHING
    if s.problems:
        message = "invalid spec: " + "; ".join(str(p) for p in s.problems)
        fields = _new_round_fields(s, at) if phase is None else {}
        return _move(s, at, "Failed", TournamentReason.INVALID_SPEC, message, fields, True)
    if phase is None:
        return _new_round(s, at)
    entries = leaderboard(s, obs)
    if phase == "Running":
        return _running(s, obs, entries, at)
    if phase == "Selecting":
        return _select(s, obs, entries, at)
    if phase == "AwaitingApproval":
        if s.approved:
            return _promote(s, obs, entries, at)
        if s.approval is not None:
            message = (
                f"{APPROVE_ANNOTATION}={s.approval!r} approves nothing: the annotation's value "
                f'must be the generation it approves, "{s.generation}"; still waiting for '
                "approval"
            )
            return _move(
                s, at, "AwaitingApproval", TournamentReason.INVALID_APPROVAL, message, {}, True
            )
        return NOTHING
    raise AssertionError(phase)  # pragma: no cover


def _new_round(s: TournamentState, at: str) -> TournamentDecision:
    spec = _spec(s)
    names = ", ".join(c.name for c in spec.candidates)
    message = (
        f"generation {s.generation}: {len(spec.candidates)} candidates ({names}), ranked by "
        f"{spec.selection.metric}; at most {spec.max_parallel} at once"
    )
    return _move(
        s,
        at,
        "Running",
        TournamentReason.ROUND_STARTED,
        message,
        _new_round_fields(s, at),
        requeue=True,
    )


def _new_round_fields(s: TournamentState, at: str) -> dict[str, Any]:
    """Clear what described the previous generation, and keep it in status.runs."""
    status = s.status
    runs = status.runs
    if status.observed_generation is not None and status.phase is not None:
        ended = status.phase in TOURNAMENT_SETTLED or status.phase == "AwaitingApproval"
        previous = TournamentRun(
            generation=status.observed_generation,
            phase=status.phase if ended else "Superseded",
            winner=status.winner,
            message=status.message,
            leaderboard=status.leaderboard,
            finished_at=at,
        )
        runs = [previous, *runs]
    waiting = (
        [
            LeaderboardEntry(name=c.name, job=child_name(s.name, c.name), phase=WAITING)
            for c in s.spec.candidates
        ]
        if s.spec is not None
        else []
    )
    return {
        "startedAt": at,
        "runs": [r.to_wire() for r in runs[:RUN_HISTORY]],
        "leaderboard": [e.to_wire() for e in waiting],
        "leader": None,
        "done": f"0/{len(waiting)}" if waiting else None,
        "winner": None,
        "promotedModel": None,
        "report": None,
    }


def _running(
    s: TournamentState, obs: TournamentObservation, entries: list[LeaderboardEntry], at: str
) -> TournamentDecision:
    fields = _board_fields(s, entries)
    events = list(_settled_events(s, entries))
    plans = schedule(s)
    events += [
        Event(
            "Normal",
            TournamentReason.CANDIDATE_STARTED,
            f"candidate {p.candidate}: {'updated' if p.update else 'created'} FineTuneJob "
            f"{p.job} for generation {s.generation}",
        )
        for p in plans
    ]
    if all(e.phase in TERMINAL_PHASES for e in entries):
        message = f"every candidate settled ({fields['done']}); selecting the winner"
        return _move(
            s,
            at,
            "Selecting",
            TournamentReason.SELECTING,
            message,
            fields,
            events=events,
            report=_report(s, obs, entries),
            requeue=True,
        )
    return TournamentDecision(
        status=changes(s.raw_status, fields), events=tuple(events), children=plans
    )


def _select(
    s: TournamentState, obs: TournamentObservation, entries: list[LeaderboardEntry], at: str
) -> TournamentDecision:
    spec = _spec(s)
    fields = _board_fields(s, entries)
    winner = fields["leader"]
    if winner is None:
        reasons = "; ".join(f"{e.name}: {e.phase} ({e.message or 'no message'})" for e in entries)
        return _move(
            s,
            at,
            "NoWinner",
            TournamentReason.NO_WINNER,
            f"no candidate passed: {reasons}",
            fields,
            warning=True,
            report=_report(s, obs, entries, None),
        )
    if spec.promotion.policy == "manual" and not s.approved:
        message = (
            f"{_won(entries, winner, obs)}; waiting for approval of generation {s.generation}: "
            f'annotate it with {APPROVE_ANNOTATION}="{s.generation}" (locally: finetune '
            f"approve {s.namespace}/{s.name})"
        )
        fields["winner"] = winner
        return _move(
            s,
            at,
            "AwaitingApproval",
            TournamentReason.AWAITING_APPROVAL,
            message,
            fields,
            report=_report(s, obs, entries, winner),
        )
    return _promote(s, obs, entries, at)


def _promote(
    s: TournamentState, obs: TournamentObservation, entries: list[LeaderboardEntry], at: str
) -> TournamentDecision:
    spec = _spec(s)
    fields = _board_fields(s, entries)
    winner = fields["leader"]
    assert winner is not None
    fields["winner"] = winner
    if s.approved and spec.promotion.policy == "manual":
        fields["approvedGeneration"] = s.generation
    if obs.promotion_rejected is not None:
        message = f"winner {winner} rejected at promotion: {obs.promotion_rejected.message}"
        report = _report(s, obs, entries, None)
        return _move(
            s, at, "NoWinner", obs.promotion_rejected.reason, message, fields, True, report=report
        )
    if obs.promotion_error is not None:
        message = f"promoting winner {winner} failed: {obs.promotion_error}"
        return _move(s, at, "Failed", TournamentReason.PROMOTION_FAILED, message, fields, True)
    if obs.promoted_uri is None:
        child = s.children[winner]
        plan = PromotionPlan(
            candidate=winner,
            run=RunPaths(s.namespace, child.job, child.generation),
            spec=s.children_specs[winner].resolve(),
            version=s.paths.version(winner),
            card=markdown(entries, _metric_used(s, entries), winner),
        )
        return TournamentDecision(promote=plan)
    fields["promotedModel"] = obs.promoted_uri
    message = f"{_won(entries, winner, obs)}; promoted to {obs.promoted_uri}"
    return _move(
        s,
        at,
        "Promoted",
        TournamentReason.PROMOTED,
        message,
        fields,
        report=_report(s, obs, entries, winner),
    )


def _won(entries: Sequence[LeaderboardEntry], winner: str, obs: TournamentObservation) -> str:
    metric = _metric_used(obs.state, entries)
    entry = next(e for e in entries if e.name == winner)
    value = metric_value(entry, metric)
    shown = "n/a" if value is None else f"{value:.4g}"
    return f"winner {winner} ({metric} {shown})"


def schedule(s: TournamentState) -> tuple[ChildPlan, ...]:
    """Children to create or update for this generation: at most maxParallel unsettled at
    once. A child still running an earlier generation's spec is counted as unsettled and
    updated at once (its own lifecycle stops the old run), so it takes no further slot."""
    spec = _spec(s)
    unsettled = [
        c.name
        for c in spec.candidates
        if (child := s.children.get(c.name)) is not None and not child.finished
    ]
    slots = spec.max_parallel - len(unsettled)
    plans = []
    for candidate in spec.candidates:
        child = s.children.get(candidate.name)
        if child is not None and child.round == s.generation:
            continue
        if candidate.name not in unsettled:
            if slots <= 0:
                continue
            slots -= 1
        plans.append(
            ChildPlan(
                candidate=candidate.name,
                job=child_name(s.name, candidate.name),
                spec=child_spec(spec, s.name, candidate),
                round=s.generation,
                update=child is not None,
            )
        )
    return tuple(plans)


# ------------------------------------------------------------------ the leaderboard


def leaderboard(s: TournamentState, obs: TournamentObservation) -> list[LeaderboardEntry]:
    """Every candidate of this generation, ranked once passed."""
    spec = _spec(s)
    entries = [_entry(s, c.name, obs.evaluations.get(c.name)) for c in spec.candidates]
    return rank(entries, _metric_used(s, entries))


def _entry(s: TournamentState, name: str, evaluation: EvaluationReport | None) -> LeaderboardEntry:
    job = child_name(s.name, name)
    child = s.current(name)
    if child is None:
        return LeaderboardEntry(name=name, job=job, phase=WAITING)
    status = child.status
    if child.phase is None:
        return LeaderboardEntry(name=name, job=job, phase="Pending")
    metrics = status.metrics
    eval_loss = _finite(evaluation.eval_loss if evaluation else None)
    if eval_loss is None and metrics is not None:
        eval_loss = _finite(metrics.eval_loss)  # no evaluation.json: the validation split's
    perplexity = _finite(evaluation.perplexity if evaluation else None)
    if perplexity is None and eval_loss is not None and eval_loss < 700:
        perplexity = math.exp(eval_loss)
    return LeaderboardEntry(
        name=name,
        job=job,
        phase=child.phase,
        message=status.message if child.finished else None,
        eval_loss=eval_loss,
        bits_per_byte=_finite(evaluation.bits_per_byte if evaluation else None),
        perplexity=perplexity,
        latency=_latencies(s, name, status),
        sla_passed=None if status.sla is None else status.sla == "Passed",
        run=status.artifacts.run if status.artifacts else None,
        report=status.artifacts.report if status.artifacts else None,
    )


def _latencies(s: TournamentState, name: str, status: FineTuneJobStatus) -> list[ProfileLatency]:
    """The gated percentile per SLA profile, in the spec's order (the first one breaks ties)."""
    report = status.benchmark
    spec = s.children_specs.get(name)
    if report is None or spec is None:
        return []
    percentile = report.percentile or spec.benchmark.percentile
    measured = {p.name: p for p in report.profiles}
    latencies = []
    for profile in spec.benchmark.sla:
        result = measured.get(profile.name)
        latencies.append(
            ProfileLatency(
                name=profile.name,
                seconds=None if result is None else gate.percentile_of(result, percentile),
                limit=profile.max_latency_seconds,
                passed=None
                if result is None
                else gate.profile_meets_sla(
                    result,
                    percentile,
                    profile.max_latency_seconds,
                    spec.benchmark.decision_margin,
                ),
            )
        )
    return latencies


def metric_value(entry: LeaderboardEntry, metric: str) -> float | None:
    if metric == "latency":
        return entry.latency[0].seconds if entry.latency else None
    return entry.eval_loss if metric == "evalLoss" else entry.bits_per_byte


def _metric_used(s: TournamentState, entries: Sequence[LeaderboardEntry]) -> Metric:
    """The spec's metric; bitsPerByte falls back to evalLoss when a passed candidate has no
    evaluation report (bits per byte need one) and every candidate has one tokenizer."""
    metric = _spec(s).selection.metric
    passed = [e for e in entries if e.phase == "Passed"]
    if metric != "bitsPerByte" or all(e.bits_per_byte is not None for e in passed):
        return metric
    models = {spec.resolve().model_id for spec in s.children_specs.values()}
    if len(models) == 1 and all(e.eval_loss is not None for e in passed):
        return "evalLoss"
    return metric


def rank(entries: Sequence[LeaderboardEntry], metric: str) -> list[LeaderboardEntry]:
    """Passed candidates ranked by the metric (lower is better; a missing value last), ties
    by the gated latency of the first profile, then by name; the others unranked."""

    def key(entry: LeaderboardEntry) -> tuple[float, float, str]:
        value = metric_value(entry, metric)
        latency = entry.latency[0].seconds if entry.latency else None
        return (
            math.inf if value is None else value,
            math.inf if latency is None else latency,
            entry.name,
        )

    order = sorted((e for e in entries if e.phase == "Passed"), key=key)
    ranks = {e.name: index + 1 for index, e in enumerate(order)}
    return [e.model_copy(update={"rank": ranks.get(e.name)}) for e in entries]


def _board_fields(s: TournamentState, entries: Sequence[LeaderboardEntry]) -> dict[str, Any]:
    leader = next((e.name for e in entries if e.rank == 1), None)
    done = sum(e.phase in TERMINAL_PHASES for e in entries)
    return {
        "leaderboard": [e.to_wire() for e in entries],
        "leader": leader,
        "done": f"{done}/{len(entries)}",
    }


def _settled_events(s: TournamentState, entries: Sequence[LeaderboardEntry]) -> list[Event]:
    """An Event for each candidate that settled since the status was written."""
    before = {e.name: e.phase for e in s.status.leaderboard}
    events = []
    for e in entries:
        if e.phase in TERMINAL_PHASES and before.get(e.name) not in TERMINAL_PHASES:
            kind: Literal["Normal", "Warning"] = "Warning" if e.phase == "Failed" else "Normal"
            message = f"candidate {e.name} {e.phase}" + (f": {e.message}" if e.message else "")
            events.append(Event(kind, TournamentReason.CANDIDATE_SETTLED, _cap(message)))
    return events


def _report(
    s: TournamentState,
    obs: TournamentObservation,
    entries: Sequence[LeaderboardEntry],
    winner: str | None = None,
) -> ReportPlan:
    """The report of this generation as it stands (written again at every later step)."""
    metric = _metric_used(s, entries)
    paths = s.paths
    title = f"Tournament {s.namespace}/{s.name}, generation {s.generation}"
    board = leaderboard_file(entries, metric, winner)
    return ReportPlan(
        uri=obs.report_uri,
        files={
            paths.leaderboard: (
                (board.model_dump_json(by_alias=True, exclude_none=False, indent=2)).encode(),
                "application/json",
            ),
            paths.report_html: (
                render_html(title, entries, metric, winner, _report_dirs(s)).encode(),
                "text/html",
            ),
        },
    )


def _report_dirs(s: TournamentState) -> dict[str, str]:
    """Each candidate's run report directory, relative to the tournament's report page
    (tournaments/<ns>/<name>/g<gen>/report/: five levels below the store's root)."""
    dirs = {}
    for candidate in s.children:
        child = s.current(candidate)
        if child is not None:
            run = RunPaths(s.namespace, child.job, child.generation)
            dirs[candidate] = f"../../../../../{run.report}"
    return dirs


# ------------------------------------------------------------------ status patches


def tournament_conditions(
    phase: TournamentPhase,
    reason: str,
    message: str,
    generation: int,
    previous: Sequence[Condition],
    at: str,
) -> list[Condition]:
    """kstatus conditions: Ready once promoted, Reconciling while candidates run or the
    winner is chosen, Stalled when the generation ended without a promotion."""
    wanted = {
        "Ready": phase == "Promoted",
        "Reconciling": phase in ("Running", "Selecting"),
        "Stalled": phase in ("NoWinner", "Failed"),
    }
    return kstatus_conditions(wanted, reason, message, generation, previous, at)


def _move(
    s: TournamentState,
    at: str,
    phase: TournamentPhase,
    reason: str,
    message: str,
    fields: dict[str, Any] | None = None,
    warning: bool = False,
    *,
    events: Sequence[Event] = (),
    report: ReportPlan | None = None,
    requeue: bool = False,
) -> TournamentDecision:
    message = _cap(message)
    conditions = tournament_conditions(
        phase, reason, message, s.generation, s.status.conditions, at
    )
    patch = {
        **(fields or {}),
        "phase": phase,
        "observedGeneration": s.generation,
        "message": message,
        "conditions": [c.to_wire() for c in conditions],
    }
    if report is not None and report.uri is not None:
        patch["report"] = report.uri
    status = changes(s.raw_status, patch)
    said = list(events)
    if "phase" in status or "message" in status:
        said.append(Event("Warning" if warning else "Normal", reason, message))
    return TournamentDecision(status=status, events=tuple(said), report=report, requeue=requeue)


def _spec(s: TournamentState) -> FineTuneTournamentSpec:
    assert s.spec is not None
    return s.spec


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _cap(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."


# ------------------------------------------------------------------ reading the objects


def tournament_state(
    obj: Mapping[str, Any], children: Sequence[Mapping[str, Any]] = ()
) -> TournamentState:
    """A FineTuneTournament and its child FineTuneJobs (as read from the API, or as a local
    executor describes its runs), in the lifecycle's terms. Children are those labelled
    with the tournament's name and, where the tournament has a UID, owned by it."""
    meta = obj.get("metadata") or {}
    name, generation, uid = meta.get("name", ""), int(meta.get("generation") or 1), meta.get("uid")
    spec: FineTuneTournamentSpec | None = None
    children_specs: dict[str, FineTuneJobSpec] = {}
    problems: tuple[Problem, ...] = ()
    try:
        parsed = parse_tournament(obj)
        spec, children_specs = parsed.spec, parsed.children
    except InvalidManifest as invalid:
        problems = tuple(invalid.problems)
    candidates = {c.name for c in spec.candidates} if spec is not None else set()
    states: dict[str, ChildState] = {}
    strays: list[str] = []
    for child in children:
        child_meta = child.get("metadata") or {}
        labels = child_meta.get("labels") or {}
        if labels.get(LABEL_TOURNAMENT) != name or not _owned_by(child_meta, uid):
            continue
        candidate = labels.get(LABEL_CANDIDATE, "")
        if candidate not in candidates:
            if spec is not None:
                strays.append(child_meta["name"])
            continue
        round_label = labels.get(LABEL_ROUND, "")
        states[candidate] = ChildState(
            candidate=candidate,
            job=child_meta["name"],
            round=int(round_label) if round_label.isdigit() else None,
            generation=int(child_meta.get("generation") or 1),
            raw_status=child.get("status") or {},
        )
    return TournamentState(
        namespace=meta.get("namespace", ""),
        name=name,
        generation=generation,
        spec=spec,
        children_specs=children_specs,
        problems=problems,
        raw_status=obj.get("status") or {},
        approval=(meta.get("annotations") or {}).get(APPROVE_ANNOTATION),
        children=states,
        strays=tuple(sorted(strays)),
        deleting=bool(meta.get("deletionTimestamp")),
    )


def _owned_by(meta: Mapping[str, Any], uid: str | None) -> bool:
    """A child of this very tournament (not of a deleted predecessor of the same name)."""
    if uid is None:
        return True
    owners = [r for r in meta.get("ownerReferences") or [] if r.get("kind") == TOURNAMENT_KIND]
    return bool(owners) and owners[0].get("uid") == uid
