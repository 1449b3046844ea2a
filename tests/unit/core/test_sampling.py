"""The statistics behind the gate: the coverage of the percentile's confidence interval over
seeded simulations of known distributions, the sequential decision and the warm-up rule."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist

import pytest

from finetune_core.sampling import (
    MIN_INTERVAL_SAMPLES,
    Decision,
    decide,
    percentile,
    percentile_interval,
    verdict,
    warmed_up,
)

Z95 = NormalDist().inv_cdf(0.95)
RUNS = 1000  # simulated benchmarks per case: the coverage is known to about +-0.7 %
TOLERANCE = 0.025  # about 3.5 standard errors of a coverage of 0.95 over RUNS


@dataclass(frozen=True)
class Latency:
    """A latency distribution with a known p95."""

    name: str
    draw: Callable[[random.Random], float]
    p95: float


def lognormal(sigma: float) -> Latency:
    return Latency(
        f"lognormal(0, {sigma})", lambda r: math.exp(r.gauss(0, sigma)), math.exp(sigma * Z95)
    )


def shifted_lognormal(sigma: float) -> Latency:
    """A fixed cost of 2 s plus a skewed part: what a loaded node looks like."""
    return Latency(
        f"2 + 0.3 * lognormal(0, {sigma})",
        lambda r: 2 + 0.3 * math.exp(r.gauss(0, sigma)),
        2 + 0.3 * math.exp(sigma * Z95),
    )


def weibull(shape: float) -> Latency:
    """A lighter tail than the lognormal's."""
    return Latency(
        f"weibull({shape})",
        lambda r: r.weibullvariate(1.0, shape),
        (-math.log(0.05)) ** (1 / shape),
    )


@dataclass(frozen=True)
class Coverage:
    covered: float  # the share of runs whose interval held the true p95
    above: float  # ... whose lower bound was above it (a wrong fail)
    below: float  # ... whose upper bound was below it (a wrong pass)


def coverage(latency: Latency, n: int, confidence: float, seed: int = 15) -> Coverage:
    rng = random.Random(seed)
    above = below = 0
    for _ in range(RUNS):
        interval = percentile_interval([latency.draw(rng) for _ in range(n)], 95, confidence)
        assert interval is not None
        above += interval[0] > latency.p95
        below += interval[1] < latency.p95
    return Coverage(1 - (above + below) / RUNS, above / RUNS, below / RUNS)


# The sample sizes the benchmark decides at: the fewest with an interval, the quickstart's
# 5, the default 20, and the default maxSamples 60.
@pytest.mark.parametrize("n", [MIN_INTERVAL_SAMPLES, 20, 60])
@pytest.mark.parametrize(
    "latency",
    [
        lognormal(0.2),
        lognormal(0.6),
        shifted_lognormal(0.5),
        shifted_lognormal(1.0),
        weibull(2.0),
        weibull(5.0),
    ],
    ids=lambda latency: latency.name,
)
def test_the_interval_covers_the_true_p95_at_the_stated_confidence(
    latency: Latency, n: int
) -> None:
    achieved = coverage(latency, n, 0.95)
    assert achieved.covered >= 0.95 - TOLERANCE, achieved
    # Each bound is one-sided at (1 + confidence) / 2.
    assert achieved.above <= 0.025 + TOLERANCE, achieved
    assert achieved.below <= 0.025 + TOLERANCE, achieved


@pytest.mark.parametrize("confidence", [0.8, 0.99])
def test_the_coverage_follows_the_confidence(confidence: float) -> None:
    achieved = coverage(lognormal(0.4), 20, confidence)
    assert achieved.covered >= confidence - TOLERANCE, achieved
    narrower = coverage(lognormal(0.4), 20, confidence - 0.1 if confidence > 0.9 else 0.6)
    assert narrower.covered < achieved.covered


def test_the_interval_needs_a_few_positive_samples() -> None:
    assert percentile_interval([1.0, 1.1, 1.2, 1.3], 95, 0.95) is None
    assert percentile_interval([1.0, 1.1, 1.2, 1.3, 0.0], 95, 0.95) is None
    assert percentile_interval([1.0, 1.1, 1.2, 1.3, math.nan], 95, 0.95) is None
    assert percentile_interval([2.0] * 8, 95, 0.95) == (2.0, 2.0)
    low, high = percentile_interval([1.0, 1.1, 1.2, 1.3, 1.4], 95, 0.95) or (0, 0)
    assert low < percentile([1.0, 1.1, 1.2, 1.3, 1.4], 95) < high
    with pytest.raises(ValueError):
        percentile_interval([1.0] * 5, 100, 0.95)
    with pytest.raises(ValueError):
        percentile_interval([1.0] * 5, 95, 1.0)


def test_the_interval_always_holds_the_measured_percentile() -> None:
    # One fast sample among slow ones lifts the fits' lower bounds above the measured p95.
    latencies = [3.0, 8.5, 8.55, 8.9, 8.93]
    low, high = percentile_interval(latencies, 95, 0.95) or (0, 0)
    assert low <= percentile(latencies, 95) <= high


def test_more_samples_narrow_the_interval() -> None:
    rng = random.Random(3)
    mean_width = []
    for n in (10, 20, 60):
        widths = []
        for _ in range(100):
            draws = [math.exp(rng.gauss(0, 0.3)) for _ in range(n)]
            low, high = percentile_interval(draws, 95, 0.95) or (0, 0)
            widths.append(high - low)
        mean_width.append(sum(widths) / len(widths))
    assert mean_width[0] > mean_width[1] > mean_width[2]


# ---------------------------------------------------------------- the sequential decision


def decided(
    latencies: list[float], limit: float, initial: int = 20, max_samples: int = 60
) -> Decision:
    """The decision with the defaults: p95, 95 % confidence, a 25 % margin, 20 to 60 samples."""
    return decide(
        latencies,
        q=95,
        limit=limit,
        confidence=0.95,
        margin=0.25,
        initial=initial,
        max_samples=max_samples,
    )


def steady(center: float, count: int, spread: float = 0.02, seed: int = 1) -> list[float]:
    rng = random.Random(seed)
    return [center * math.exp(rng.gauss(0, spread)) for _ in range(count)]


def test_a_clear_pass_is_decided_by_the_interval_after_the_initial_samples() -> None:
    latencies = steady(2.0, 20)
    assert not decided(latencies[:19], limit=10).done  # below `initial`
    decision = decided(latencies, limit=10)
    assert (decision.done, decision.passed, decision.basis) == (True, True, "interval")
    assert decision.upper is not None and decision.upper <= 10
    assert decision.samples == 20


def test_a_clear_fail_is_decided_by_the_interval() -> None:
    decision = decided(steady(12.0, 20), limit=10)
    assert (decision.done, decision.passed, decision.basis) == (True, False, "interval")
    assert decision.lower is not None and decision.lower > 10


def test_a_far_point_estimate_decides_by_the_margin_when_the_interval_cannot() -> None:
    # Noisy samples: the interval straddles the limit, the p95 is far (50 %) below it.
    rng = random.Random(4)
    noisy = [math.exp(rng.gauss(0, 0.6)) for _ in range(20)]
    limit = percentile(noisy, 95) * 1.5
    decision = decided(noisy, limit=limit)
    assert decision.lower is not None and decision.lower <= limit < (decision.upper or 0)
    assert (decision.done, decision.passed, decision.basis) == (True, True, "margin")
    # ... and 30 % above it.
    limit = percentile(noisy, 95) / 1.3
    decision = decided(noisy, limit=limit)
    assert decision.lower is not None and decision.lower <= limit < (decision.upper or 0)
    assert (decision.done, decision.passed, decision.basis) == (True, False, "margin")
    # Too few for an interval (initial 3): the margin alone decides.
    few = decided([2.0, 2.1, 2.2], limit=10, initial=3)
    assert (few.done, few.passed, few.basis, few.lower) == (True, True, "margin", None)


def test_a_borderline_profile_takes_more_samples_then_decides() -> None:
    """A p95 just under the limit: not decided at the initial 20, decided later: by the
    interval once it narrows enough, or at maxSamples on the point estimate."""
    latencies = steady(9.0, 60, spread=0.05, seed=7)
    limit = percentile(latencies, 95) * 1.02  # just above the measured p95
    assert not decided(latencies[:20], limit=limit).done
    taken = next(n for n in range(20, 61) if decided(latencies[:n], limit=limit).done)
    assert taken > 20
    final = decided(latencies[:taken], limit=limit)
    assert final.basis in {"interval", "pointEstimate"}
    assert final.samples == taken


def test_at_max_samples_the_point_estimate_decides() -> None:
    latencies = steady(9.0, 60, spread=0.3, seed=2)
    p95 = percentile(latencies, 95)
    for limit, passed in ((p95 * 1.05, True), (p95 * 0.95, False)):
        assert not decided(latencies[:59], limit=limit).done
        decision = decided(latencies, limit=limit)
        assert (decision.done, decision.passed, decision.basis) == (True, passed, "pointEstimate")
    # maxSamples below samples: the initial samples are the most there are.
    decision = decided(latencies[:20], limit=p95, max_samples=5)
    assert decision.done


def test_the_rule_on_given_numbers() -> None:
    assert verdict(5.0, (4.0, 5.9), 6, 0.25, final=False) == (True, "interval")
    assert verdict(7.0, (6.1, 9.0), 6, 0.25, final=False) == (False, "interval")
    assert verdict(4.0, (2.0, 6.5), 6, 0.25, final=False) == (True, "margin")
    assert verdict(5.9, (5.0, 6.5), 6, 0.25, final=False) is None
    assert verdict(5.9, (5.0, 6.5), 6, 0.25, final=True) == (True, "pointEstimate")
    assert verdict(6.1, None, 6, 0.25, final=True) == (False, "pointEstimate")
    assert verdict(6.1, None, 6, 0.0, final=False) == (False, "margin")


# ---------------------------------------------------------------- the warm-up rule


def test_warm_up_ends_when_two_consecutive_samples_agree_within_the_tolerance() -> None:
    assert not warmed_up([], 0.1)
    assert not warmed_up([5.0], 0.1)  # one sample compares with nothing
    assert not warmed_up([15.0, 4.0], 0.1)  # a cold first generation
    assert not warmed_up([15.0, 4.0, 3.0], 0.1)  # 33 % apart
    assert warmed_up([15.0, 4.0, 3.0, 3.2], 0.1)  # 6 % apart
    assert not warmed_up([3.0, 3.4], 0.1)  # 0.4 apart, 10 % of the later is 0.34
    assert not warmed_up([3.4, 3.0], 0.1)  # 0.4 apart, 10 % of the later is 0.30
    assert warmed_up([3.0, 3.3], 0.1)  # 0.3 apart, 10 % of the later is 0.33
    assert warmed_up([3.0, 3.5], 0.2)
