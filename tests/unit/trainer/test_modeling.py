"""Model loading decisions that need no model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from finetune_trainer.backend import cgroup_cpu_limit, compute_dtype, limit_cpu_threads
from finetune_trainer.modeling import local_model_path, transformers_load_options


@pytest.mark.parametrize(
    ("line", "cpus"),
    [("max 100000\n", None), ("800000 100000\n", 8), ("150000 100000", 2), ("50000 100000", 1)],
)
def test_cgroup_cpu_limit(line: str, cpus: int | None) -> None:
    assert cgroup_cpu_limit(line) == cpus


def test_thread_pool_follows_the_cpu_limit(tmp_path: Path) -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        cpu_max = tmp_path / "cpu.max"
        cpu_max.write_text("100000 100000\n")
        limit_cpu_threads(cpu_max)
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        limit_cpu_threads(tmp_path / "absent")  # no cgroup v2 file: unchanged
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_only_the_packaged_model_is_rewritten() -> None:
    assert local_model_path("unsloth/Qwen3-8B") == "unsloth/Qwen3-8B"


def test_a_local_model_directory_is_loaded_from_its_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_dir = tmp_path / "models" / "llama-random"
    model_dir.mkdir(parents=True)
    (model_dir / "config.json").write_text("{}")
    assert local_model_path(str(model_dir)) == str(model_dir.resolve())
    monkeypatch.chdir(tmp_path)
    assert local_model_path("models/llama-random") == str(model_dir.resolve())
    # A directory without config.json is not a model: the id goes to the hub unchanged.
    assert local_model_path("models") == "models"


def test_on_a_gpu_the_weights_load_straight_onto_it_in_the_compute_dtype() -> None:
    options = transformers_load_options(False, torch.bfloat16, "cuda", quantizable=True)
    assert options == {"dtype": torch.bfloat16, "device_map": {"": 0}}
    assert transformers_load_options(False, torch.float32, "cpu", quantizable=False) == {
        "dtype": torch.float32
    }


def test_4bit_only_where_bitsandbytes_can_run() -> None:
    quantized = transformers_load_options(True, torch.bfloat16, "cuda", quantizable=True)
    config = quantized["quantization_config"]
    assert config.load_in_4bit and config.bnb_4bit_compute_dtype == torch.bfloat16
    assert "quantization_config" not in transformers_load_options(
        True, torch.float32, "cpu", quantizable=False
    )


@pytest.mark.parametrize(
    ("gpu", "bf16", "precision", "dtype"),
    [
        (False, True, "bf16", torch.float32),
        (True, True, "bf16", torch.bfloat16),
        (True, False, "bf16", torch.float16),
        (True, True, "fp16", torch.float16),
        (True, True, "fp32", torch.float32),
    ],
)
def test_compute_dtype_follows_the_precision_on_a_gpu_only(
    gpu: bool, bf16: bool, precision: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)
    assert compute_dtype(precision) == dtype
