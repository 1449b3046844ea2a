"""Checkpoints in the store: `checkpoints/step-<N>/`, complete once its marker is written.

The trainer saves a checkpoint locally (transformers' format: adapter, optimizer,
scheduler, RNG and trainer state); a hard-linked copy is uploaded in the background, then
the marker `layout.CHECKPOINT_COMPLETE_MARKER`, then older checkpoints beyond
training.keepCheckpoints are deleted. A checkpoint without its marker (a pod killed during
the upload) is never resumed from, and is deleted at the next pruning.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from finetune_core.layout import (
    CHECKPOINT_COMPLETE_MARKER,
    RunPaths,
    StoredCheckpoints,
    scan_checkpoints,
)
from finetune_core.store import ArtifactStore
from finetune_trainer.uploads import BackgroundUploader

log = logging.getLogger(__name__)

STATE_FILE = "finetune_state.json"  # our own state, saved inside each checkpoint
# Its keys: what a resumed attempt cannot measure again.
TRAIN_SECONDS = "trainSeconds"  # training wall time of every attempt so far
BASE_EVAL_LOSS = "baseEvalLoss"  # the base model's eval loss, measured before step 1


@dataclass(frozen=True)
class LocalCheckpoint:
    """A checkpoint downloaded for resuming."""

    step: int
    path: Path


def to_delete(found: StoredCheckpoints, keep: int) -> list[int]:
    """Steps to delete: complete ones beyond the newest `keep`, and every incomplete one.

    Uploads run one at a time, so while this runs no upload of ours is half done: an
    incomplete checkpoint is left over from a process that was killed.
    """
    return sorted(found.complete[:-keep] + found.incomplete) if keep > 0 else []


def read_state(checkpoint_dir: Path) -> dict[str, float]:
    path = checkpoint_dir / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def write_state(checkpoint_dir: Path, state: dict[str, float]) -> None:
    (checkpoint_dir / STATE_FILE).write_text(json.dumps(state))


class ResumableState:
    """Our state across attempts: the values a checkpoint carries (`snapshot`), starting
    from the resumed checkpoint's, with this attempt's training time added."""

    def __init__(self, saved: dict[str, float]):
        self.saved = saved
        self.values: dict[str, float] = {}
        self.started: float | None = None

    def get(self, key: str) -> float | None:
        return self.values.get(key, self.saved.get(key))

    def set(self, key: str, value: float) -> None:
        self.values[key] = value

    def start_training_clock(self) -> None:
        self.started = time.monotonic()

    def train_seconds(self) -> float:
        elapsed = time.monotonic() - self.started if self.started is not None else 0.0
        return self.saved.get(TRAIN_SECONDS, 0.0) + elapsed

    def snapshot(self) -> dict[str, float]:
        return {**self.values, TRAIN_SECONDS: self.train_seconds()}


class CheckpointSync:
    """Finds, downloads, uploads and prunes one run's checkpoints in the store."""

    def __init__(
        self,
        store: ArtifactStore,
        paths: RunPaths,
        uploader: BackgroundUploader,
        staging: Path,
        keep: int,
    ):
        self.store = store
        self.paths = paths
        self.uploader = uploader
        self.staging = staging
        self.keep = keep
        self.uploaded: list[int] = []  # steps whose upload completed in this process

    def stored(self) -> StoredCheckpoints:
        keys = self.store.list(self.paths.checkpoints + "/")
        return scan_checkpoints(keys, self.paths.checkpoints)

    def download_newest(self, into: Path) -> LocalCheckpoint | None:
        """Download the newest complete checkpoint to `into/checkpoint-<N>`, or None."""
        step = self.stored().newest
        if step is None:
            return None
        target = into / f"checkpoint-{step}"
        prefix = self.paths.checkpoint(step) + "/"
        keys = [
            key
            for key in self.store.list(prefix)
            if not key.endswith("/" + CHECKPOINT_COMPLETE_MARKER)
        ]
        for key in keys:
            path = target / key[len(prefix) :]
            path.parent.mkdir(parents=True, exist_ok=True)
            self.store.get_file(key, path)
        log.info("downloaded checkpoint step-%d (%d files)", step, len(keys), extra={"step": step})
        return LocalCheckpoint(step, target)

    def upload_later(self, step: int, local_dir: Path) -> None:
        """Queue the upload of a checkpoint saved locally; returns at once.

        The files are hard-linked into a staging folder first, so the trainer may delete
        or overwrite its own copy while the upload runs.
        """
        staged = self.staging / f"step-{step}"
        shutil.rmtree(staged, ignore_errors=True)
        shutil.copytree(local_dir, staged, copy_function=_link_or_copy)
        self.uploader.submit(f"checkpoint step-{step}", lambda: self._upload(step, staged))

    def _upload(self, step: int, staged: Path) -> None:
        prefix = self.paths.checkpoint(step)
        marker = f"{prefix}/{CHECKPOINT_COMPLETE_MARKER}"
        if not self.store.exists(marker):
            self.store.delete_prefix(prefix + "/")  # leftovers of a killed upload
        files = sorted(path for path in staged.rglob("*") if path.is_file())
        for path in files:
            self.store.put_file(f"{prefix}/{path.relative_to(staged).as_posix()}", path)
        self.store.put_bytes(marker, b"")
        self.uploaded.append(step)
        log.info("checkpoint step-%d uploaded (%d files)", step, len(files), extra={"step": step})
        shutil.rmtree(staged, ignore_errors=True)
        self.prune()

    def prune(self) -> None:
        for step in to_delete(self.stored(), self.keep):
            self.store.delete_prefix(self.paths.checkpoint(step) + "/")
            log.info("deleted checkpoint step-%d", step, extra={"step": step})


def _link_or_copy(source: str, destination: str) -> None:
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)
