"""benchmarks/gpu_path.py with the tiny model on the CPU (transformers backend), so the GPU
script keeps working between the runs on a lent GPU."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu_path.py"


@pytest.mark.slow
def test_the_gpu_path_script_runs_end_to_end_on_a_tiny_model(tmp_path: Path) -> None:
    output = tmp_path / "results.json"
    command = [sys.executable, str(SCRIPT), "--shape", "tiny", "--backends", "transformers"]
    command += ["--workdir", str(tmp_path / "work"), "--output", str(output)]
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    printed = result.stdout
    assert "MFU counts 4*N FLOPs per trained token" in printed
    assert "matmul peak" in printed
    summary = json.loads(output.read_text())
    assert summary["shape"] == "tiny" and summary["peakFlops"] > 0
    run = summary["runs"]["transformers"]
    assert run["backend"] == "transformers"  # as metrics.json recorded it
    assert run["usefulTokensPerSecond"] > 0 and run["medianStepSeconds"] > 0
    assert 0 < run["mfu"] < 1
    assert "trained with transformers" in run["device"]
    profiles = {p["name"]: p for p in run["profiles"]}
    assert {name: p["maxNewTokens"] for name, p in profiles.items()} == {
        "question": 200,
        "answer": 50,
    }
    for profile in profiles.values():
        assert 0 < profile["ttftP50"] <= profile["p50"] <= profile["p95"]
        assert profile["itlP50"] > 0
    print(f"gpu_path.py on the CPU: {elapsed:.0f} s")
