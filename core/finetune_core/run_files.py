"""Reading what the lifecycle asks for (`lifecycle.Reads`) from a run's files in the store.

Both executors read through here, with one policy (store.read_model_if_valid): a file that
is absent, or present but invalid (logged), is None, and the step that needs it decides
what its absence means.
"""

from __future__ import annotations

import logging

from finetune_core.api import BenchmarkReport, Metrics, Progress
from finetune_core.layout import CurrentAlias, ErrorReport, RunPaths, scan_checkpoints
from finetune_core.lifecycle import Reads, RunFiles
from finetune_core.promotion import PromotionError, read_champion
from finetune_core.store import ArtifactStore, open_object, read_model_if_valid

log = logging.getLogger(__name__)


def last_checkpoint(store: ArtifactStore, run: RunPaths) -> str | None:
    """The key of the newest checkpoint the trainer marked complete."""
    newest = scan_checkpoints(store.list(run.checkpoints + "/"), run.checkpoints).newest
    return None if newest is None else run.checkpoint(newest)


def dataset_missing(uri: str, endpoint: str | None) -> bool:
    """Whether a dataset is certainly absent; when the check itself fails (no access, the
    store is down), the training stage finds out and reports it."""
    try:
        store, key = open_object(uri, endpoint)
        return not store.exists(key)
    except Exception as error:  # unreachable, access denied (the S3 client's own errors)
        log.warning("could not check that %s exists: %s", uri, error)
        return False


def champion(store: ArtifactStore, model: str) -> CurrentAlias | None:
    try:
        return read_champion(store, model)
    except PromotionError as error:
        log.warning("the current model alias is unreadable; gating without it: %s", error)
        return None


def read_run_files(
    store: ArtifactStore, run: RunPaths, want: Reads, endpoint: str | None = None
) -> RunFiles:
    """Everything `want` names, read in one go (blocking: the operator runs it in a thread)."""
    checkpoint = last_checkpoint(store, run) if want.checkpoints else None
    return RunFiles(
        progress=read_model_if_valid(store, run.progress, Progress) if want.progress else None,
        metrics=read_model_if_valid(store, run.metrics, Metrics) if want.metrics else None,
        report=read_model_if_valid(store, run.benchmark_report, BenchmarkReport)
        if want.report
        else None,
        error=read_model_if_valid(store, run.error, ErrorReport) if want.error else None,
        champion=champion(store, want.champion) if want.champion else None,
        last_checkpoint=store.uri(checkpoint) if checkpoint else None,
        dataset_missing=dataset_missing(want.dataset, endpoint) if want.dataset else False,
    )
