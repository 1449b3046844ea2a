"""The runs in an artifact store as `finetune run`, `runs` and `show` see them.

Local runs have no API server to count generations, so the store is the record: the newest
`runs/<ns>/<name>/g<N>/config.json` and its `status.json` decide whether a `finetune run`
resumes that generation, reports its result, or starts generation N+1 (`plan_run`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import ValidationError

from finetune_core.api import (
    TERMINAL_PHASES,
    BenchmarkReport,
    Condition,
    FineTuneJobStatus,
    Metrics,
    Phase,
    Progress,
    ResolvedSpec,
    RunConfig,
)
from finetune_core.layout import CHECKPOINT_COMPLETE_MARKER, ErrorReport, RunPaths
from finetune_core.promotion import timestamp
from finetune_core.store import ArtifactStore

CONFIG_KEY = re.compile(r"runs/([^/]+)/([^/]+)/g(\d+)/config\.json")
# A finished run with an unchanged spec is reported, not repeated (like `kubectl apply` of
# an unchanged object); Failed is not among them: running it again retries the failed stage.
SETTLED_PHASES: frozenset[str] = frozenset({"Promoted", "Rejected", "AwaitingApproval"})


@dataclass(frozen=True)
class RunSnapshot:
    """One run directory: what it runs and where it stands."""

    paths: RunPaths
    config: RunConfig
    status: FineTuneJobStatus


@dataclass(frozen=True)
class Plan:
    """What `finetune run` does with a manifest, given the newest run of the same job."""

    generation: int
    action: Literal["start", "continue", "report"]
    why: str


def plan_run(spec: ResolvedSpec, latest: RunSnapshot | None, dataset_sha256: str | None) -> Plan:
    """Start a new generation when the inputs changed, else continue or report the newest.

    The inputs are the resolved spec and, where both are known, the dataset file's digest:
    editing a local dataset in place retrains like a new dataset version would.
    """
    if latest is None:
        return Plan(1, "start", "first run of this job")
    generation = latest.paths.generation
    if latest.config.spec.to_wire() != spec.to_wire():
        return Plan(generation + 1, "start", f"the spec changed since generation {generation}")
    trained_on = latest.status.metrics.dataset_sha256 if latest.status.metrics else None
    if dataset_sha256 and trained_on and trained_on != dataset_sha256:
        return Plan(generation + 1, "start", f"the dataset changed since generation {generation}")
    phase = latest.status.phase or "Pending"
    if phase in SETTLED_PHASES:
        return Plan(
            generation,
            "report",
            f"generation {generation} already ran this spec ({phase}); change the spec to retrain",
        )
    if phase == "Failed":
        return Plan(generation, "continue", f"retrying generation {generation}, which failed")
    return Plan(generation, "continue", f"resuming generation {generation} ({phase})")


def ready_condition(
    phase: Phase, reason: str, message: str, generation: int, previous: list[Condition], now: str
) -> Condition:
    """The kstatus Ready condition: True only once the model is promoted. The transition time
    moves only when the condition's status changes."""
    status: Literal["True", "False"] = "True" if phase == "Promoted" else "False"
    old = next((c for c in previous if c.type == "Ready"), None)
    since = old.last_transition_time if old is not None and old.status == status else now
    return Condition(
        type="Ready",
        status=status,
        reason=reason,
        message=message,
        observed_generation=generation,
        last_transition_time=since,
    )


def with_phase(
    status: FineTuneJobStatus,
    phase: Phase,
    reason: str,
    message: str,
    now: datetime,
    **fields: Any,
) -> FineTuneJobStatus:
    """The status moved to a phase (or kept in it with a new message), other fields updated."""
    generation = status.observed_generation or 1
    ready = ready_condition(phase, reason, message, generation, status.conditions, timestamp(now))
    return status.model_copy(
        update={"phase": phase, "message": message, "conditions": [ready], **fields}
    )


def save_status(store: ArtifactStore, run: RunPaths, status: FineTuneJobStatus) -> None:
    store.put_json(run.status, status.to_wire())


def find_runs(
    store: ArtifactStore, namespace: str | None = None, name: str | None = None
) -> list[RunPaths]:
    """Every run directory with a config.json, optionally of one job, oldest generation first."""
    prefix = f"runs/{namespace}/{name}/" if namespace and name else "runs/"
    found = []
    for key in store.list(prefix):
        match = CONFIG_KEY.fullmatch(key)
        if match and (name is None or match[2] == name):
            found.append(RunPaths(match[1], match[2], int(match[3])))
    return sorted(found, key=lambda run: (run.namespace, run.name, run.generation))


def _read(store: ArtifactStore, key: str, model: type[Any]) -> Any:
    """A JSON file as its model; None when absent or unreadable (a half-written run)."""
    raw = store.get_json_or_none(key)
    if raw is None:
        return None
    try:
        return model.model_validate(raw)
    except ValidationError:
        return None


def inferred_status(store: ArtifactStore, run: RunPaths, config: RunConfig) -> FineTuneJobStatus:
    """A status for a run without status.json (written by the operator's pods, or a pipeline
    that was killed), from the files its stages left."""
    error: ErrorReport | None = _read(store, run.error, ErrorReport)
    report: BenchmarkReport | None = _read(store, run.benchmark_report, BenchmarkReport)
    metrics: Metrics | None = _read(store, run.metrics, Metrics)
    progress: Progress | None = _read(store, run.progress, Progress)
    phase: Phase
    if error is not None:
        phase, message = "Failed", f"{error.stage}: {error.message}"
    elif report is not None:
        phase, message = "Benchmarking", "benchmark measured; not gated"
    elif metrics is not None:
        phase, message = "Benchmarking", "trained; not benchmarked"
    elif progress is not None:
        phase, message = "Training", f"step {progress.step}/{progress.total_steps}"
    else:
        phase, message = "Pending", "no stage has reported yet"
    created = timestamp(config.created_at) if config.created_at else None
    return FineTuneJobStatus(
        phase=phase,
        observed_generation=run.generation,
        message=message,
        model=config.spec.model_id,
        progress=progress,
        metrics=metrics,
        benchmark=report,
        started_at=created,
    )


def last_checkpoint(store: ArtifactStore, run: RunPaths) -> str | None:
    """The key of the newest checkpoint the trainer marked complete."""
    steps = [
        int(match[1])
        for key in store.list(run.checkpoints + "/")
        if (
            match := re.fullmatch(
                rf"{re.escape(run.checkpoints)}/step-(\d+)/"
                rf"{CHECKPOINT_COMPLETE_MARKER}",
                key,
            )
        )
    ]
    return run.checkpoint(max(steps)) if steps else None


def load_run(store: ArtifactStore, run: RunPaths) -> RunSnapshot | None:
    """A run's config and status (stored, else inferred); None without a readable config."""
    config: RunConfig | None = _read(store, run.config, RunConfig)
    if config is None:
        return None
    status: FineTuneJobStatus | None = _read(store, run.status, FineTuneJobStatus)
    if status is None:
        status = inferred_status(store, run, config)
    elif status.phase not in TERMINAL_PHASES:
        # Training progress lives in progress.json; status.json is written at transitions.
        status = status.model_copy(
            update={"progress": _read(store, run.progress, Progress) or status.progress}
        )
    return RunSnapshot(run, config, status)


def latest_run(store: ArtifactStore, namespace: str, name: str) -> RunSnapshot | None:
    """The newest generation of one job that has a readable config."""
    for run in reversed(find_runs(store, namespace, name)):
        snapshot = load_run(store, run)
        if snapshot is not None:
            return snapshot
    return None


class UnknownRun(LookupError):
    """No single job matches a name given on the command line."""


def newest_of(store: ArtifactStore, name: str) -> RunSnapshot:
    """The newest generation of the job `[namespace/]name`; UnknownRun says what is wrong."""
    namespace, _, job = name.rpartition("/")
    runs = find_runs(store, namespace or None, job)
    if not runs:
        raise UnknownRun(f"no run named {name!r} in {store.uri()} (see `finetune runs`)")
    jobs = sorted({f"{run.namespace}/{run.name}" for run in runs})
    if len(jobs) > 1:
        raise UnknownRun(f"{name!r} is ambiguous in {store.uri()}: name one of {', '.join(jobs)}")
    snapshot = load_run(store, runs[-1])
    if snapshot is None:
        raise UnknownRun(f"{store.uri(runs[-1].config)} is unreadable")
    return snapshot


def all_runs(store: ArtifactStore) -> list[RunSnapshot]:
    """Every readable run, newest start first."""
    snapshots = [s for run in find_runs(store) if (s := load_run(store, run)) is not None]
    return sorted(
        snapshots, key=lambda s: (s.status.started_at or "", s.paths.generation), reverse=True
    )
