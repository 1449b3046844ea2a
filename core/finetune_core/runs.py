"""The runs in an artifact store: which exist, and where each stands.

A run directory (`runs/<ns>/<name>/g<N>/`) holds config.json (who it is and what it runs)
and, for local runs, status.json (the status the cluster keeps in the FineTuneJob). A run
written by a cluster's pods has no status.json: its status is inferred from the files its
stages left. `finetune run`, `runs`, `show` and `approve` all find runs here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from finetune_core.api import (
    BenchmarkReport,
    FineTuneJobStatus,
    Metrics,
    Phase,
    Progress,
    ResolvedSpec,
    RunConfig,
)
from finetune_core.clock import timestamp
from finetune_core.layout import ErrorReport, RunPaths
from finetune_core.lifecycle import with_percent
from finetune_core.store import ArtifactStore, read_model_if_valid

CONFIG_KEY = re.compile(r"runs/([^/]+)/([^/]+)/g(\d+)/config\.json")


@dataclass(frozen=True)
class RunSnapshot:
    """One run directory: what it runs and where it stands."""

    paths: RunPaths
    config: RunConfig
    status: FineTuneJobStatus


class UnknownRun(LookupError):
    """No single job matches a name given on the command line."""


def new_run_config(run: RunPaths, uid: str | None, spec: ResolvedSpec) -> RunConfig:
    """config.json of a run about to start: who it is, whose it is, and what it runs."""
    return RunConfig(
        namespace=run.namespace,
        name=run.name,
        generation=run.generation,
        uid=uid,
        spec=spec,
        created_at=datetime.now(UTC),
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


def inferred_status(store: ArtifactStore, run: RunPaths, config: RunConfig) -> FineTuneJobStatus:
    """A status for a run without status.json (written by the operator's pods, or a local
    run that was killed), from the files its stages left."""
    error = read_model_if_valid(store, run.error, ErrorReport)
    report = read_model_if_valid(store, run.benchmark_report, BenchmarkReport)
    metrics = read_model_if_valid(store, run.metrics, Metrics)
    progress = read_model_if_valid(store, run.progress, Progress)
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


def load_run(store: ArtifactStore, run: RunPaths) -> RunSnapshot | None:
    """A run's config and status (stored, else inferred); None without a readable config."""
    config = read_model_if_valid(store, run.config, RunConfig)
    if config is None:
        return None
    status = read_model_if_valid(store, run.status, FineTuneJobStatus)
    if status is None:
        status = inferred_status(store, run, config)
    elif status.phase == "Training":
        # While training, progress.json is fresher than status.json (a killed run's, too).
        progress = read_model_if_valid(store, run.progress, Progress)
        if progress is not None:
            status = status.model_copy(update={"progress": with_percent(progress)})
    return RunSnapshot(run, config, status)


def latest_run(store: ArtifactStore, namespace: str, name: str) -> RunSnapshot | None:
    """The newest generation of one job that has a readable config."""
    for run in reversed(find_runs(store, namespace, name)):
        snapshot = load_run(store, run)
        if snapshot is not None:
            return snapshot
    return None


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
