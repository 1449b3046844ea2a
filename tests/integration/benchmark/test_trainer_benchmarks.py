"""benchmarks/trainer_vs_trl.py and benchmarks/checkpoint_overhead.py with a step or two, so
the scripts that measure the trainer keep working between measurements. Only the figures'
presence and sanity are checked: speed is what the scripts print, never a test's verdict."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


def run_script(name: str, *arguments: str) -> str:
    command = [sys.executable, str(REPO / "benchmarks" / name), *arguments]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    return result.stdout


@pytest.mark.slow
def test_trainer_vs_trl_prints_both_speeds_the_peak_and_the_eval_losses(tmp_path: Path) -> None:
    output = tmp_path / "results.json"
    printed = run_script(
        "trainer_vs_trl.py", "--rounds", "1", "--steps", "2", "--output", str(output)
    )
    assert "fp32 matmul peak" in printed
    assert "ours / trl (useful tokens/s)" in printed
    assert "eval loss after 2 steps: packed" in printed
    summary = json.loads(output.read_text())
    kinds = summary["kinds"]
    assert set(kinds) == {"ours", "trl", "ours-padded"}
    # The same conversations in the same order: the same useful tokens for every kind.
    assert kinds["ours"]["tokens"] == kinds["trl"]["tokens"] == kinds["ours-padded"]["tokens"]
    for kind in kinds.values():
        assert kind["tokensPerSecond"] > 0 and 0 < kind["peakShare"] < 1
    # Packing changes the work, not the loss.
    assert summary["evalLossDifference"] < 0.02


@pytest.mark.slow
def test_checkpoint_overhead_prints_the_slowdown_and_uploads_the_checkpoints(
    tmp_path: Path,
) -> None:
    output = tmp_path / "results.json"
    printed = run_script(
        "checkpoint_overhead.py",
        *("--rounds", "1", "--steps", "2", "--save-steps", "1", "--batch-size", "2"),
        *("--output", str(output)),
    )
    assert "slowdown from checkpoints" in printed
    runs = json.loads(output.read_text())["runs"]
    [with_checkpoints] = runs["every 1 steps"]
    [without] = runs["none"]
    assert with_checkpoints["uploadsFinished"] and without["uploadsFinished"]
    # Steps 1 and 2 against the final step's alone: more checkpoint files in the bucket.
    assert with_checkpoints["checkpointFiles"] > without["checkpointFiles"] > 0
    assert with_checkpoints["stepsPerSecond"] > 0 and without["stepsPerSecond"] > 0
