"""Latency statistics: definitions as vLLM bench and GuideLLM use them."""

from __future__ import annotations

import random

import numpy as np
import pytest

from finetune_core.sampling import percentile
from finetune_trainer.latency import SampleTiming, summarize


def test_one_sample_ttft_itl_latency_and_throughput() -> None:
    sample = SampleTiming(token_times=(0.5, 0.6, 0.8, 0.9), end=1.0)
    assert sample.tokens == 4
    assert sample.ttft == 0.5
    assert sample.itl == pytest.approx((0.9 - 0.5) / 3)
    assert sample.latency == 1.0
    assert sample.tokens_per_second == pytest.approx(4.0)


def test_a_single_token_has_no_gap() -> None:
    sample = SampleTiming(token_times=(0.2,), end=0.25)
    assert sample.itl == 0.0
    assert sample.tokens == 1


@pytest.mark.parametrize(
    ("times", "end", "problem"),
    [
        ((), 1.0, "at least one token"),
        ((0.3, 0.2), 1.0, "must not decrease"),
        ((-0.1, 0.2), 1.0, "between the start and the end"),
        ((0.1, 0.9), 0.5, "between the start and the end"),
    ],
)
def test_impossible_samples_are_rejected(
    times: tuple[float, ...], end: float, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        SampleTiming(token_times=times, end=end)


@pytest.mark.parametrize(
    ("q", "expected"),
    [(0, 1.0), (50, 2.5), (100, 4.0), (90, 3.7), (25, 1.75)],
)
def test_percentile_interpolates_between_closest_ranks(q: float, expected: float) -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], q) == pytest.approx(expected)


def test_percentile_agrees_with_numpy() -> None:
    rng = random.Random(7)
    for size in (1, 2, 3, 10, 57):
        values = [rng.uniform(0, 10) for _ in range(size)]
        for q in (50, 90, 95, 99):
            assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_of_nothing_or_out_of_range_is_an_error() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match=r"0\.\.100"):
        percentile([1.0], 101)


def test_summary_of_measured_samples() -> None:
    samples = [
        SampleTiming(token_times=(0.1 * k, 0.1 * k + 0.2), end=0.1 * k + 0.3) for k in range(1, 11)
    ]
    stats = summarize(samples)
    latencies = [s.latency for s in samples]
    assert stats.samples == 10
    assert stats.p50 == pytest.approx(float(np.percentile(latencies, 50)))
    assert stats.p95 == pytest.approx(float(np.percentile(latencies, 95)))
    assert stats.max == pytest.approx(max(latencies))
    assert stats.p50 <= stats.p90 <= stats.p95 <= stats.p99 <= stats.max
    assert stats.ttft_p50 == pytest.approx(float(np.median([s.ttft for s in samples])))
    assert stats.itl_p50 == pytest.approx(0.2)
    assert stats.tokens_per_second == pytest.approx(
        float(np.median([2 / s.latency for s in samples]))
    )


def test_summary_needs_samples() -> None:
    with pytest.raises(ValueError, match="no measured samples"):
        summarize([])
