"""End to end on a real adapter (smollm2-135m on the CPU): a limit set just above the
measured p95 leaves the verdict open after the initial samples, so the benchmark measures
more and reports the bounds, the samples, the warm-ups and the verdict's basis."""

from __future__ import annotations

import json

import pytest

from finetune_core.api import BenchmarkReport
from finetune_core.gate import profile_verdict
from finetune_core.layout import RunPaths
from finetune_core.store import LocalStore
from tests.integration.benchmark.conftest import TrainedRun, finetune, run_spec

pytestmark = pytest.mark.slow

PROBE = RunPaths("ml", "probe", 2)
CLOSE = RunPaths("ml", "close", 2)
INITIAL, MAXIMUM = 5, 15


def measure(
    trained: TrainedRun, store: LocalStore, run: RunPaths, limit: float, **benchmark: object
) -> BenchmarkReport:
    sla = [{"name": "answer", "maxNewTokens": 4, "maxLatencySeconds": limit}]
    spec = run_spec(str(trained.dataset), sla, **benchmark)
    spec["benchmark"].update({"samples": INITIAL, "maxSamples": MAXIMUM, "warmup": 6})
    result = finetune("benchmark", "--run", trained.copy_to(store, run, spec))
    assert result.returncode == 0, result.stderr[-3000:]
    return BenchmarkReport.model_validate(store.get_json(run.benchmark_report))


def test_a_limit_just_above_the_p95_takes_more_samples_and_reports_the_basis(
    trained: TrainedRun, local_store: LocalStore
) -> None:
    probe = measure(trained, local_store, PROBE, limit=600)
    (loose,) = probe.profiles
    assert loose.samples == INITIAL and loose.verdict_basis in {"interval", "margin"}
    assert loose.p95 is not None

    # A wide decision margin, so that only the interval or maxSamples can decide.
    limit = round(loose.p95 * 1.05, 4)
    report = measure(trained, local_store, CLOSE, limit=limit, decisionMargin=0.9)
    (close,) = report.profiles
    print(
        "\nprobe:",
        json.dumps(loose.to_wire()),
        "\nclose:",
        json.dumps(close.to_wire()),
        f"\nlimit {limit}",
    )
    assert report.confidence == 0.95 and report.interval_method
    assert close.samples is not None and INITIAL < close.samples <= MAXIMUM
    assert close.verdict_basis in {"interval", "pointEstimate"}
    assert close.lower_bound is not None and close.upper_bound is not None
    assert close.lower_bound <= close.upper_bound
    if close.verdict_basis == "pointEstimate":  # the interval never left the limit
        assert close.samples == MAXIMUM
        assert close.lower_bound <= limit < close.upper_bound
    assert close.warmups is not None and 1 <= close.warmups <= 6
    # The gate reads the same verdict from the report as the benchmark reached.
    assert profile_verdict(close, 95, limit, 0.9) == (close.passed, close.verdict_basis)
    assert report.passed == close.passed
    recorded = json.loads(local_store.get_bytes(f"{CLOSE.report}/samples.json"))
    assert len(recorded["profiles"][0]["samples"]) == close.samples
    assert recorded["profiles"][0]["warmup"] == close.warmups
