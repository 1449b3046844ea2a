"""Reading what the lifecycle asks for (`lifecycle.Reads`) from a run's files in the store.

Both executors read through here, with one policy (store.read_model_if_valid): a file that
is absent, or present but invalid (logged), is None, and the step that needs it decides
what its absence means.
"""

from __future__ import annotations

import logging
from typing import TypeVar

from pydantic import BaseModel

from finetune_core.api import BenchmarkReport, EvaluationReport, Metrics, Progress, RunConfig
from finetune_core.layout import (
    AliasPaths,
    CurrentAlias,
    ErrorReport,
    RunPaths,
    scan_checkpoints,
)
from finetune_core.lifecycle import InvalidRunFile, Reads, RunFiles, StageName
from finetune_core.promotion import PromotionError, read_champion
from finetune_core.store import (
    ArtifactStore,
    InvalidFile,
    open_store,
    read_model,
    read_model_if_valid,
    split_uri,
)

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)


def last_checkpoint(store: ArtifactStore, run: RunPaths) -> str | None:
    """The key of the newest checkpoint the trainer marked complete."""
    newest = scan_checkpoints(store.list(run.checkpoints + "/"), run.checkpoints).newest
    return None if newest is None else run.checkpoint(newest)


def dataset_missing_at(uri: str, endpoint: str | None, runs: ArtifactStore | None = None) -> bool:
    """Whether a dataset is certainly absent; when the check itself fails (no access, the
    store is down), the training stage finds out and reports it. A dataset in the runs'
    own bucket is looked up with that store's client (a client of its own would open a
    connection and ask for the bucket's region first)."""
    try:
        location, key = split_uri(uri)
        store = (
            runs if runs is not None and runs.uri() == location else open_store(location, endpoint)
        )
        return not store.exists(key)
    except Exception as error:  # unreachable, access denied (the S3 client's own errors)
        log.warning("could not check that %s exists: %s", uri, error)
        return False


def champion(store: ArtifactStore, alias: AliasPaths) -> CurrentAlias | None:
    try:
        return read_champion(store, alias)
    except PromotionError as error:
        log.warning("the current model alias is unreadable; gating without it: %s", error)
        return None


def _result(
    store: ArtifactStore, key: str, model: type[M], invalid: list[InvalidRunFile]
) -> M | None:
    """A stage's result file; one that is present but invalid is recorded, since the run
    cannot go on from it."""
    try:
        return read_model(store, key, model)
    except InvalidFile as error:
        log.warning("%s", error)
        invalid.append(InvalidRunFile(key.rsplit("/", 1)[-1], str(error), error.non_finite))
        return None


def written_for_another(store: ArtifactStore, run: RunPaths, uid: str | None) -> str | None:
    """The UID of another object that wrote this run directory (a deleted predecessor of the
    same name), if one did."""
    if uid is None:
        return None
    owner = run_owner(store, run)
    return None if owner is None or owner == uid else owner


def run_owner(store: ArtifactStore, run: RunPaths) -> str | None:
    """The UID of the object whose config.json the run directory holds (None: no config,
    or one written before UIDs were recorded)."""
    config = read_model_if_valid(store, run.config, RunConfig)
    return None if config is None else config.uid


def move_aside(store: ArtifactStore, run: RunPaths, uid: str | None) -> bool:
    """Before a run writes its directory: move a predecessor's run there out of the way,
    to runs/<ns>/<name>/superseded/<its uid>/g<N>/ (copied first, then deleted, so a crash
    in between loses nothing). Whether there was one to move."""
    other = written_for_another(store, run, uid)
    if other is None:
        return False
    log.warning("%s was written for %s; moving it aside", store.uri(run.prefix), other)
    store.copy_prefix(run.prefix, run.superseded(other))
    store.delete_prefix(run.prefix + "/")
    return True


def claim_run_directory(store: ArtifactStore, run: RunPaths, config: RunConfig) -> bool:
    """Make the run directory this run's before its first stage starts: write its
    config.json unless the object's own is there already, moving a predecessor's run out
    of the way first. True when the directory held no config.json: a fresh run, so no
    earlier try of it can have left files (an error.json) to clear. A new run, the common
    case, costs one conditional write instead of a read, a lookup and a write."""
    if store.put_json_if(run.config, config.to_wire(), None):
        return True
    if move_aside(store, run, config.uid):  # it was a predecessor's config, moved aside now
        store.put_json(run.config, config.to_wire())
    return False


def read_run_files(
    store: ArtifactStore,
    run: RunPaths,
    want: Reads,
    endpoint: str | None = None,
    uid: str | None = None,
) -> RunFiles:
    """Everything `want` names, read in one go (blocking: the operator runs it in a thread).
    A run directory written for another object `uid` holds nothing of this run's."""
    dataset_missing = dataset_missing_at(want.dataset, endpoint, store) if want.dataset else False
    wants_run_files = want.progress or want.metrics or want.report or want.evaluation or want.error
    if (wants_run_files or want.checkpoints or want.finished) and written_for_another(
        store, run, uid
    ):
        return RunFiles(dataset_missing=dataset_missing)
    checkpoint = last_checkpoint(store, run) if want.checkpoints else None
    invalid: list[InvalidRunFile] = []
    metrics = _result(store, run.metrics, Metrics, invalid) if want.metrics else None
    report = _result(store, run.benchmark_report, BenchmarkReport, invalid) if want.report else None
    return RunFiles(
        progress=read_model_if_valid(store, run.progress, Progress) if want.progress else None,
        metrics=metrics,
        report=report,
        # Optional (a benchmark written before it existed has none): unusable is absent, and
        # a gate threshold that needs it says the figure is missing.
        evaluation=(
            read_model_if_valid(store, run.evaluation, EvaluationReport)
            if want.evaluation
            else None
        ),
        invalid=tuple(invalid),
        error=read_model_if_valid(store, run.error, ErrorReport) if want.error else None,
        champion=champion(store, want.champion) if want.champion else None,
        last_checkpoint=store.uri(checkpoint) if checkpoint else None,
        dataset_missing=dataset_missing,
        finished=want.finished is not None
        and stage_finished(store, run, want.finished, want.round),
    )


def stage_finished(store: ArtifactStore, run: RunPaths, stage: StageName, round: int = 1) -> bool:
    """Whether a stage left its result: training its metrics and adapter, a benchmark round
    its benchmark.json (written last)."""
    if stage == "benchmark":
        key = run.benchmark_report if round == 1 else run.round_benchmark_report(round)
        return store.exists(key)
    return store.exists(run.metrics) and any(store.list(run.adapter + "/"))
