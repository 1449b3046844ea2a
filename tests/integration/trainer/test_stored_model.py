"""model.name: s3://... — a model saved in the object store, for clusters without a model
hub: copied into the pod's cache with the run's credentials, then loaded like a local one."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune_core.api import FineTuneJobSpec
from finetune_core.store import S3Store
from finetune_trainer import smollm2
from finetune_trainer.modeling import load_base, local_model_path
from finetune_trainer.stage import StageFailure

pytestmark = pytest.mark.slow


def spec_for(uri: str) -> FineTuneJobSpec:
    return FineTuneJobSpec.model_validate(
        {
            "model": {"name": uri, "maxSeqLength": 128},
            "dataset": {"uri": "s3://datasets/chat.jsonl"},
            "resources": {"gpus": 0},
        }
    )


def test_a_model_saved_in_the_store_is_copied_and_loaded(
    s3_store: S3Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saved = smollm2.converted_model_dir()
    s3_store.upload_dir("models/smollm2", saved)
    uri = f"s3://{s3_store.bucket}/models/smollm2"
    monkeypatch.setenv(smollm2.CACHE_ENV, str(tmp_path / "cache"))

    copy = Path(local_model_path(uri))
    assert copy.is_relative_to(tmp_path / "cache")
    assert sorted(p.name for p in copy.iterdir()) == sorted(p.name for p in saved.iterdir())
    assert local_model_path(uri) == str(copy)  # unchanged in the store: copied once

    loaded = load_base(spec_for(uri).resolve(), training=False)
    ids = loaded.tokenizer("def add(a, b):", return_tensors="pt").input_ids
    assert (
        loaded.model.generate(ids, max_new_tokens=3, do_sample=False).shape[1] == ids.shape[1] + 3
    )

    s3_store.put_bytes("models/smollm2/generation_config.json", b'{"do_sample": false}')
    assert local_model_path(uri) != str(copy)  # rewritten at the same URI: fetched again


def test_a_uri_without_a_model_is_an_input_error(s3_store: S3Store) -> None:
    with pytest.raises(StageFailure) as failure:
        local_model_path(f"s3://{s3_store.bucket}/models/nothing-here")
    assert failure.value.reason == "ModelNotFound"
    assert "model.name" in str(failure.value)
