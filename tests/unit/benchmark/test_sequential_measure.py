"""The measuring loop with the sampling rules: warm-up until stable (capped), then samples
until the SLA decision is made (at least `samples`, at most `maxSamples`); and how the CLI's
SLA table shows the result. Generations are simulated: a fixed sequence of latencies."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import pytest
from rich.console import Console

from finetune_cli.local.view import sla_table
from finetune_core.sampling import warmed_up
from finetune_trainer import timing
from finetune_trainer.latency import SampleTiming
from tests.unit.benchmark.builders import make_report, make_spec, profile
from tests.unit.core.test_sampling import decided


def scripted(monkeypatch: pytest.MonkeyPatch, latencies: list[float]) -> None:
    """Make every generation take the next latency of the list."""
    clock: Iterator[float] = iter(latencies)

    def fake(model: Any, prompt: Any, options: Any) -> SampleTiming:
        latency = next(clock)
        return SampleTiming((latency / 2,), latency)

    monkeypatch.setattr(timing, "time_generation", fake)


def run(
    monkeypatch: pytest.MonkeyPatch,
    latencies: list[float],
    limit: float,
    max_warmup: int = 10,
    samples: int = 5,
    max_samples: int = 30,
) -> timing.Measurement:
    scripted(monkeypatch, latencies)
    go_on = functools.partial(_undecided, limit=limit, samples=samples, max_samples=max_samples)
    return timing.measure_until(
        None,
        [{}],
        {},
        max_warmup=max_warmup,
        warmed_up=functools.partial(warmed_up, tolerance=0.1),
        samples=samples,
        max_samples=max_samples,
        go_on=go_on,
    )


def _undecided(latencies: list[float], limit: float, samples: int, max_samples: int) -> bool:
    return not decided(latencies, limit, samples, max_samples).done


COLD = [15.0, 6.0, 3.1, 3.0]  # stable at the 4th warm-up: 3.0 is within 10 % of 3.1


def test_warm_up_runs_until_two_consecutive_samples_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    measured = run(monkeypatch, [*COLD, *[1.0] * 40], limit=10)
    assert measured.warmups == 4
    assert [t.latency for t in measured.timings] == [1.0] * 5  # a clear pass at 5 samples


def test_warm_up_stops_at_its_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    measured = run(monkeypatch, [15.0, 6.0, 3.0, *[1.0] * 40], limit=10, max_warmup=2)
    assert measured.warmups == 2
    assert measured.timings[0].latency == 3.0  # the first measured sample
    assert run(monkeypatch, [1.0] * 40, limit=10, max_warmup=0).warmups == 0


def test_a_borderline_profile_takes_more_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    noisy = [2.0, 2.6, 2.2, 2.9, 2.4, 2.1, 2.8, 2.3, 2.5, 2.7] * 4
    measured = run(monkeypatch, [*COLD, *noisy], limit=2.95)
    assert 5 < len(measured.timings) <= 30
    clear = run(monkeypatch, [*COLD, *noisy], limit=100)
    assert len(clear.timings) == 5


def test_sampling_stops_at_max_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    noisy = [2.0, 2.6, 2.2, 2.9, 2.4, 2.1, 2.8, 2.3, 2.5, 2.7] * 4
    measured = run(monkeypatch, [*COLD, *noisy], limit=2.85, max_samples=12)
    assert len(measured.timings) == 12


def test_the_sla_table_shows_the_interval_samples_and_basis() -> None:
    result = profile("answer", 1.0, 2.31, 6).model_copy(
        update={
            "lower_bound": 2.1,
            "upper_bound": 2.6,
            "samples": 24,
            "warmups": 3,
            "verdict_basis": "interval",
        }
    )
    spec = make_spec([{"name": "answer", "maxNewTokens": 50, "maxLatencySeconds": 6}])
    report = make_report(result)
    report.confidence = 0.95
    console = Console(record=True, width=160)
    console.print(sla_table(report, spec.benchmark))
    text = console.export_text()
    assert "2.31 s [2.10, 2.60]" in text
    assert "24 (+3 warm-up)" in text
    assert "pass (interval)" in text
    assert "95 % confidence interval" in text
    older = make_report(profile("answer", 1.0, 2.31, 6))  # no bounds: as before
    console = Console(record=True, width=160)
    console.print(sla_table(older, spec.benchmark))
    text = console.export_text()
    assert "2.31 s" in text and "[" not in text and "pass" in text and "(point" not in text
