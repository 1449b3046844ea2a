"""Preset resolution and the field paths of validation errors."""

from __future__ import annotations

import pytest

from finetune_core.api import FineTuneJobSpec
from finetune_core.manifest import InvalidManifest, parse_manifest
from tests.support.manifests import finetunejob


def _spec(**overrides: object) -> FineTuneJobSpec:
    return FineTuneJobSpec.model_validate(
        {"model": {"preset": "qwen3-8b"}, "dataset": {"uri": "s3://d/v1.jsonl"}, **overrides}
    )


def test_preset_carries_the_seed_plan() -> None:
    resolved = _spec().resolve()
    assert resolved.model_id == "unsloth/Qwen3-8B"
    assert (resolved.lora_r, resolved.lora_alpha, resolved.batch_size) == (24, 24, 4)
    assert resolved.gradient_accumulation_steps == 2
    assert resolved.precision == "bf16"
    assert resolved.load_in_4bit is True


def test_explicit_fields_override_the_preset() -> None:
    resolved = _spec(
        model={"preset": "qwen3-8b", "loadIn4bit": False, "maxSeqLength": 1024},
        lora={"r": 8, "dropout": 0},
        training={"learningRate": 1e-5, "warmupSteps": 0, "precision": "fp16"},
    ).resolve()
    assert (resolved.load_in_4bit, resolved.max_seq_length) == (False, 1024)
    assert (resolved.lora_r, resolved.lora_alpha, resolved.lora_dropout) == (8, 24, 0)
    assert (resolved.learning_rate, resolved.warmup_steps) == (1e-5, 0)
    assert resolved.precision == "fp16"


def test_a_model_name_without_preset_gets_generic_defaults() -> None:
    resolved = _spec(model={"name": "org/custom-7b"}).resolve()
    assert resolved.model_id == "org/custom-7b"
    assert resolved.preset is None
    assert resolved.optimizer == "adamw_torch"


def test_every_problem_is_reported_with_its_path() -> None:
    doc = finetunejob(
        "ok-name",
        model={},
        dataset={"uri": "gs://bucket/x.jsonl"},
        benchmark={"sla": [{"name": "a", "maxNewTokens": 1, "maxLatencySeconds": 1}] * 2},
    )
    with pytest.raises(InvalidManifest) as raised:
        parse_manifest(doc)
    lines = [str(p) for p in raised.value.problems]
    assert lines == [
        "spec.model: set model.preset or model.name",
        "spec.dataset.uri: unsupported URI scheme gs://; use s3://bucket/key, file:///path or "
        "a relative path",
        "spec.benchmark.sla: duplicate SLA profile name 'a'",
    ]
