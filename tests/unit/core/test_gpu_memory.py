"""The GPU memory estimate against the seed plans' published figures (within 30 %), and
the preflight that fails a run that cannot fit before any pod is created."""

from __future__ import annotations

from typing import Any

import pytest

from finetune_core.api import FineTuneJobSpec, ResolvedSpec
from finetune_core.gpu_memory import estimate, shape_of
from finetune_core.manifest import InvalidManifest, parse_manifest
from finetune_operator.observe import run_state
from finetune_operator.settings import OperatorSettings
from tests.support.manifests import finetunejob

GB = 1e9


def resolved(preset: str, **sections: Any) -> ResolvedSpec:
    body = {"model": {"preset": preset}, "dataset": {"uri": "s3://datasets/a.jsonl"}}
    return FineTuneJobSpec.model_validate({**body, **sections}).resolve()


@pytest.mark.parametrize(
    ("preset", "published_gb"),
    [
        ("phi-4", 15.0),  # "Phi-4 14B in 4-bit fine-tunes in under 15 GB"
        ("mistral-nemo-12b", 12.0),  # "Mistral NeMo 12B in 4-bit in 12 GB"
        ("qwen3-8b", 16.0),  # "Qwen3 8B in 4-bit about 16 GB"
    ],
)
def test_the_estimate_is_within_30_percent_of_the_seed_plans_figures(
    preset: str, published_gb: float
) -> None:
    spec = resolved(preset)
    shape = shape_of(spec)
    assert shape is not None
    assert estimate(spec, shape).total / GB == pytest.approx(published_gb, rel=0.30)


def test_mistral_7b_in_fp16_weighs_about_14_gb() -> None:
    spec = resolved(
        "mistral-7b-instruct-v0.2",
        model={"preset": "mistral-7b-instruct-v0.2", "loadIn4bit": False},
    )
    spec = spec.model_copy(update={"precision": "fp16"})
    shape = shape_of(spec)
    assert shape is not None
    assert estimate(spec, shape).weights / GB == pytest.approx(14.0, rel=0.30)


def test_a_longer_sequence_or_full_precision_needs_more() -> None:
    base = resolved("qwen3-8b")
    shape = shape_of(base)
    assert shape is not None
    longer = base.model_copy(update={"max_seq_length": 4 * base.max_seq_length})
    full = base.model_copy(update={"load_in_4bit": False})
    assert estimate(longer, shape).activations > estimate(base, shape).activations
    assert estimate(full, shape).weights > 2.5 * estimate(base, shape).weights


def test_a_model_named_by_id_has_no_known_shape() -> None:
    spec = resolved("phi-4", model={"preset": "phi-4", "name": "meta-llama/Llama-3.1-8B"})
    assert shape_of(spec) is None


def test_more_than_one_gpu_is_refused_with_the_reason() -> None:
    with pytest.raises(InvalidManifest, match="multi-GPU training is not supported yet"):
        parse_manifest(finetunejob("two", resources={"gpus": 2}))


def test_a_run_that_cannot_fit_one_gpu_fails_before_any_pod() -> None:
    from finetune_core.lifecycle import Observation, decide
    from tests.unit.operator.test_lifecycle import NOW, at_phase, run_uri

    obj = at_phase("Validating", model={"preset": "phi-4"}, resources={"gpus": 1})
    small = OperatorSettings(gpu_memory_gib=8)
    decision = decide(Observation(run_state(obj, (), small), run_uri()), NOW)
    assert (decision.create, decision.status["phase"]) == (None, "Failed")
    assert decision.status["conditions"][0]["reason"] == "InsufficientGPUMemory"
    assert "loadIn4bit" in decision.status["message"] and "8.0 GiB" in decision.status["message"]
    roomy = decide(Observation(run_state(obj, (), OperatorSettings()), run_uri()), NOW)
    assert roomy.create == "train"
