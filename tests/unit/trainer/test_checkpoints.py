"""Which checkpoints count, which are deleted, and the upload/download round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune_core.layout import (
    CHECKPOINT_COMPLETE_MARKER,
    RunPaths,
    StoredCheckpoints,
    scan_checkpoints,
)
from finetune_core.store import ArtifactStore
from finetune_trainer import checkpoints
from finetune_trainer.checkpoints import (
    BASE_EVAL_LOSS,
    TRAIN_SECONDS,
    CheckpointSync,
    ResumableState,
    read_state,
    to_delete,
    write_state,
)
from finetune_trainer.uploads import BackgroundUploader

PATHS = RunPaths("ns", "job", 2)
PREFIX = PATHS.checkpoints


def keys(step: int, complete: bool) -> list[str]:
    files = [f"{PREFIX}/step-{step}/adapter_model.safetensors", f"{PREFIX}/step-{step}/sub/x"]
    return files + ([f"{PREFIX}/step-{step}/{CHECKPOINT_COMPLETE_MARKER}"] if complete else [])


def test_scan_needs_the_marker_and_sorts_numerically() -> None:
    found = scan_checkpoints(
        keys(100, True)
        + keys(20, True)
        + keys(300, False)
        + keys(9, False)
        + [f"{PREFIX}/notes.txt", f"{PATHS.prefix}/adapter/step-5/COMPLETE"],
        PREFIX,
    )
    assert found == StoredCheckpoints(complete=[20, 100], incomplete=[9, 300])
    assert found.newest == 100
    assert scan_checkpoints([], PREFIX).newest is None


@pytest.mark.parametrize(
    ("complete", "incomplete", "keep", "deleted"),
    [
        ([10, 20, 30, 40], [], 3, [10]),
        ([10, 20], [], 3, []),
        ([10, 20, 30], [25, 50], 1, [10, 20, 25, 50]),
        ([], [5], 3, [5]),
    ],
)
def test_to_delete_keeps_the_newest_complete(
    complete: list[int], incomplete: list[int], keep: int, deleted: list[int]
) -> None:
    assert to_delete(StoredCheckpoints(complete, incomplete), keep) == deleted


def test_own_state_round_trip(tmp_path: Path) -> None:
    assert read_state(tmp_path) == {}
    write_state(tmp_path, {"baseEvalLoss": 2.5})
    assert read_state(tmp_path) == {"baseEvalLoss": 2.5}


def test_no_complete_checkpoint_means_no_resume(local_store: ArtifactStore, tmp_path: Path) -> None:
    local_store.put_bytes(f"{PREFIX}/step-9/adapter_model.safetensors", b"partial")
    sync = CheckpointSync(local_store, PATHS, BackgroundUploader(), tmp_path, keep=1)
    assert sync.download_newest(tmp_path / "resume") is None


def test_resumable_state_carries_the_base_loss_and_adds_up_training_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = iter([100.0, 130.0, 1000.0, 1005.0])
    monkeypatch.setattr(checkpoints.time, "monotonic", lambda: next(clock))
    first = ResumableState({})
    assert first.get(BASE_EVAL_LOSS) is None and first.train_seconds() == 0.0
    first.set(BASE_EVAL_LOSS, 2.5)
    first.start_training_clock()  # 100
    write_state(tmp_path, first.snapshot())  # at 130: 30 s trained
    assert read_state(tmp_path) == {BASE_EVAL_LOSS: 2.5, TRAIN_SECONDS: 30.0}

    resumed = ResumableState(read_state(tmp_path))  # a retried pod, its own clock
    assert resumed.get(BASE_EVAL_LOSS) == 2.5  # not measured again
    resumed.start_training_clock()  # 1000
    assert resumed.train_seconds() == 35.0  # 30 s before, 5 s in this attempt
