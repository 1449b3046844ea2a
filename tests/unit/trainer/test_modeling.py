"""Model loading decisions that need no model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from finetune_trainer.backend import cgroup_cpu_limit, limit_cpu_threads
from finetune_trainer.modeling import local_model_path


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
