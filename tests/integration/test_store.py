"""The store's two implementations behave the same."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune_core.api import RunConfig
from finetune_core.layout import RunPaths
from finetune_core.manifest import parse_manifest
from finetune_core.run_files import claim_run_directory
from finetune_core.runs import new_run_config
from finetune_core.store import ArtifactStore, NotFound, open_run
from tests.support.manifests import small_job


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest) -> ArtifactStore:
    return request.getfixturevalue(f"{request.param}_store")


def test_round_trip_and_listing(store: ArtifactStore, tmp_path: Path) -> None:
    store.put_json("runs/ns/a/g1/config.json", {"x": 1})
    big = tmp_path / "big.bin"
    big.write_bytes(b"\1" * (6 * 1024 * 1024))  # over the multipart threshold
    store.put_file("runs/ns/a/g1/adapter/weights.bin", big)
    assert store.get_json("runs/ns/a/g1/config.json") == {"x": 1}
    assert list(store.list("runs/ns/a/g1/")) == [
        "runs/ns/a/g1/adapter/weights.bin",
        "runs/ns/a/g1/config.json",
    ]
    out = tmp_path / "out.bin"
    store.get_file("runs/ns/a/g1/adapter/weights.bin", out)
    assert out.read_bytes() == big.read_bytes()
    copied = store.copy_prefix("runs/ns/a/g1/adapter", "models/m/v1/adapter")
    assert copied == ["models/m/v1/adapter/weights.bin"]
    store.delete_prefix("runs/ns/a/g1/adapter")
    assert not store.exists("runs/ns/a/g1/adapter/weights.bin")
    with pytest.raises(NotFound):
        store.get_bytes("runs/ns/a/g1/missing.json")
    assert store.get_json_or_none("nope.json") is None


def test_open_run_splits_store_root_and_run(tmp_path: Path) -> None:
    store, prefix = open_run(f"{tmp_path}/runs/ml/job/g3")
    assert prefix == "runs/ml/job/g3"
    assert store.uri() == str(tmp_path)
    with pytest.raises(ValueError, match="not a run URI"):
        open_run("s3://bucket/somewhere")


def test_a_run_directory_is_claimed_once_and_a_predecessors_moved_aside(
    store: ArtifactStore,
) -> None:
    """A new run's config.json is one conditional write; the same object's second claim
    changes nothing; another object's run in the same directory is moved aside first."""
    run = RunPaths("ns", "job", 1)
    spec = parse_manifest(small_job("job", "s3://bucket/data.jsonl")).spec.resolve()
    first = new_run_config(run, "uid-1", spec)
    assert claim_run_directory(store, run, first) is True
    assert RunConfig.model_validate(store.get_json(run.config)).uid == "uid-1"
    store.put_json(run.error, {"stage": "train"})

    again = new_run_config(run, "uid-1", spec.model_copy(update={"lora_r": 64}))
    assert claim_run_directory(store, run, again) is False
    kept = RunConfig.model_validate(store.get_json(run.config))
    assert (kept.uid, kept.spec.lora_r) == ("uid-1", spec.lora_r)
    assert store.exists(run.error)  # the caller clears it: not a fresh run

    successor = new_run_config(run, "uid-2", spec)
    assert claim_run_directory(store, run, successor) is False
    assert RunConfig.model_validate(store.get_json(run.config)).uid == "uid-2"
    assert store.exists(f"{run.superseded('uid-1')}/error.json")
    assert not store.exists(run.error)
