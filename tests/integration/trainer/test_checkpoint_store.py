"""Checkpoints through a real store: upload, prune, download the newest (directory and S3)."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune_core.layout import (
    CHECKPOINT_COMPLETE_MARKER,
    RunPaths,
    StoredCheckpoints,
)
from finetune_core.store import ArtifactStore
from finetune_trainer.checkpoints import (
    CheckpointSync,
)
from finetune_trainer.uploads import BackgroundUploader

PATHS = RunPaths("ns", "job", 2)
PREFIX = PATHS.checkpoints


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest) -> ArtifactStore:
    return request.getfixturevalue(f"{request.param}_store")


def fake_checkpoint(directory: Path, step: int) -> Path:
    directory.mkdir(parents=True)
    (directory / "adapter_model.safetensors").write_bytes(bytes([step]) * 100)
    (directory / "nested").mkdir()
    (directory / "nested" / "state.json").write_text(f'{{"step": {step}}}')
    return directory


def test_upload_prune_and_download_newest(store: ArtifactStore, tmp_path: Path) -> None:
    uploader = BackgroundUploader(first_retry_seconds=0.05)
    sync = CheckpointSync(store, PATHS, uploader, tmp_path / "staging", keep=2)
    # Left over from a killed pod: files without the marker, newer than anything complete.
    store.put_bytes(f"{PREFIX}/step-7/adapter_model.safetensors", b"partial")
    for step in (2, 4, 6):
        local = fake_checkpoint(tmp_path / f"checkpoint-{step}", step)
        sync.upload_later(step, local)
    assert uploader.close(timeout=30)
    assert sync.uploaded == [2, 4, 6]
    assert sync.stored() == StoredCheckpoints(complete=[4, 6], incomplete=[])
    assert not (tmp_path / "staging" / "step-6").exists()  # staged copies are removed

    newest = sync.download_newest(tmp_path / "resume")
    assert newest is not None and newest.step == 6
    target = newest.path
    assert target == tmp_path / "resume" / "checkpoint-6"
    assert (target / "adapter_model.safetensors").read_bytes() == bytes([6]) * 100
    assert (target / "nested" / "state.json").read_text() == '{"step": 6}'
    assert not (target / CHECKPOINT_COMPLETE_MARKER).exists()


def test_staged_copy_survives_the_trainer_deleting_its_checkpoint(
    local_store: ArtifactStore, tmp_path: Path
) -> None:
    uploader = BackgroundUploader()
    sync = CheckpointSync(local_store, PATHS, uploader, tmp_path / "staging", keep=3)
    local = fake_checkpoint(tmp_path / "checkpoint-3", 3)
    sync.upload_later(3, local)
    for path in sorted(local.rglob("*"), reverse=True):  # what save_total_limit does
        path.unlink() if path.is_file() else path.rmdir()
    assert uploader.close(timeout=30)
    assert local_store.get_bytes(f"{PREFIX}/step-3/adapter_model.safetensors") == bytes([3]) * 100
