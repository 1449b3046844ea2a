"""When to stop sampling latency, and what the samples say about the gated percentile.

Pure functions over lists of seconds, shared by the benchmark's measuring loop (which asks
after each sample whether to go on) and the gate (which judges a report with the same rule).

The confidence interval of a latency percentile
-----------------------------------------------
A distribution-free bound from order statistics needs many samples before it exists at all:
the largest of n samples is an upper 95 % bound on p95 only when 1 - 0.95**n >= 0.95, that
is n >= 59 (and 72 for the two-sided 95 % interval used here). The benchmark starts with
5-20 samples, and a bootstrap of an upper percentile from 20 samples cannot reach above
their maximum, so its upper bound undercovers badly (at most 64 % for p95 at n = 20).

So the interval is parametric, from the tolerance factor of a normal sample: the
q-quantile of a normal variable is mu + z_q * sigma, and its confidence bounds are
mean + k * sd with k the one-sided factor at (1 + confidence) / 2 in each tail, in the
normal approximation of the non-central t (Natrella): k = (z_q +- sqrt(z_q**2 - a*b)) / a
with a = 1 - z_g**2 / (2(n - 1)) and b = z_q**2 - z_g**2 / n. No one shape fits every
latency: a lognormal (the fit made to the logarithms) suits right-skewed latency, a
shifted lognormal (the same fit to the latencies less an estimated fixed cost: the smallest
sample less the gap to the second smallest) suits a fixed cost plus a skewed part, and a
normal (the fit made to the latencies) suits a light tail; each alone puts one bound on the
wrong side of the true percentile too often when the shape is another's. The interval is
the hull of the three. tests/unit/core/test_sampling.py measures the achieved coverage over
seeded simulations (lognormal, shifted lognormal, Weibull) at the sample sizes the benchmark
decides at (5, 20, 60): at least the stated confidence within the test's tolerance, each
bound on the wrong side at most about (1 - confidence) / 2 of the time. The point estimate
stays the empirical percentile (linear interpolation between closest ranks), as before.

The sequential decision
-----------------------
After the initial samples, and after each further one: pass when the upper bound is within
the limit, fail when the lower bound is above it (basis `interval`); otherwise a point
estimate more than `margin` (a fraction of the limit) away from the limit decides
(`margin`); otherwise measure one more sample, and at `max_samples` decide on the point
estimate (`pointEstimate`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

VerdictBasis = Literal["interval", "margin", "pointEstimate"]
VERDICT_BASES: tuple[VerdictBasis, ...] = ("interval", "margin", "pointEstimate")
INTERVAL_METHOD = "tolerance-hull"  # the hull of the three fits above
# Fewer samples give no interval (the approximation needs n - 1 > z**2 / 2, and below this
# a standard deviation of the logs says little).
MIN_INTERVAL_SAMPLES = 5


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, not {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def normal_interval(values: Sequence[float], q: float, confidence: float) -> tuple[float, float]:
    """Bounds on the q-th percentile of normal values (the tolerance factor above)."""
    n = len(values)
    mean = math.fsum(values) / n
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in values) / (n - 1))
    normal = NormalDist()
    z_q = normal.inv_cdf(q / 100)
    z_g = normal.inv_cdf((1 + confidence) / 2)
    a = 1 - z_g**2 / (2 * (n - 1))
    b = z_q**2 - z_g**2 / n
    if a <= 0:
        raise ValueError(f"{n} samples are too few for confidence {confidence}")
    root = math.sqrt(z_q**2 - a * b)  # real whenever a > 0
    return mean + sd * (z_q - root) / a, mean + sd * (z_q + root) / a


def lognormal_interval(values: Sequence[float], q: float, confidence: float) -> tuple[float, float]:
    """Bounds on the q-th percentile of positive values whose logarithm is normal."""
    low, high = normal_interval([math.log(v) for v in values], q, confidence)
    return math.exp(low), math.exp(high)


def percentile_interval(
    values: Sequence[float], q: float, confidence: float
) -> tuple[float, float] | None:
    """(lower, upper) confidence bounds on the q-th percentile (0 < q < 100), each bound
    one-sided at (1 + confidence) / 2, so the interval covers the true percentile with
    `confidence` (see the module docstring). None with fewer than MIN_INTERVAL_SAMPLES
    values, a value that is not positive, or one of them too large for the confidence."""
    if not 0 < q < 100:
        raise ValueError(f"percentile must be within (0, 100), not {q}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be within (0, 1), not {confidence}")
    if len(values) < MIN_INTERVAL_SAMPLES or any(not (v > 0 and math.isfinite(v)) for v in values):
        return None
    if max(values) == min(values):  # no spread: the percentile is that value
        return values[0], values[0]
    ordered = sorted(values)
    shift = max(0.0, ordered[0] - (ordered[1] - ordered[0]))
    shifted = [v - shift for v in ordered]
    if shifted[0] <= 0:  # two equal smallest samples: shift below them
        shift, shifted = 0.0, ordered
    try:
        fits = [
            lognormal_interval(ordered, q, confidence),
            tuple(bound + shift for bound in lognormal_interval(shifted, q, confidence)),
            normal_interval(ordered, q, confidence),
        ]
    except (OverflowError, ValueError):
        return None
    # A fast outlier inflates every fit's spread and can lift all three lower bounds above
    # the measured percentile: no bound excludes what was measured.
    measured = percentile(ordered, q)
    return min(measured, *(fit[0] for fit in fits)), max(measured, *(fit[1] for fit in fits))


@dataclass(frozen=True)
class Decision:
    """What the samples so far say. `done` is False while more samples are wanted; then
    `passed` and `basis` are None."""

    done: bool
    passed: bool | None
    basis: VerdictBasis | None
    estimate: float
    lower: float | None
    upper: float | None
    samples: int


def verdict(
    estimate: float,
    interval: tuple[float, float] | None,
    limit: float,
    margin: float,
    *,
    final: bool,
) -> tuple[bool, VerdictBasis] | None:
    """The rule on one profile's numbers: the interval, then the margin, then (when `final`)
    the point estimate; None when undecided and not final."""
    if interval is not None:
        lower, upper = interval
        if upper <= limit:
            return True, "interval"
        if lower > limit:
            return False, "interval"
    if abs(estimate - limit) > margin * limit:
        return estimate <= limit, "margin"
    if final:
        return estimate <= limit, "pointEstimate"
    return None


def decide(
    latencies: Sequence[float],
    *,
    q: float,
    limit: float,
    confidence: float,
    margin: float,
    initial: int,
    max_samples: int,
) -> Decision:
    """The sequential decision after len(latencies) measured samples: go on below `initial`,
    decide by the interval or the margin when they can, and on the point estimate at
    `max_samples` (or `initial`, if that is larger)."""
    if not latencies:
        raise ValueError("no samples to decide on")
    n = len(latencies)
    estimate = percentile(latencies, q)
    interval = percentile_interval(latencies, q, confidence)
    lower, upper = interval if interval is not None else (None, None)
    if n < initial:
        return Decision(False, None, None, estimate, lower, upper, n)
    outcome = verdict(estimate, interval, limit, margin, final=n >= max(initial, max_samples))
    if outcome is None:
        return Decision(False, None, None, estimate, lower, upper, n)
    return Decision(True, outcome[0], outcome[1], estimate, lower, upper, n)


def warmed_up(latencies: Sequence[float], tolerance: float) -> bool:
    """Latency is stable: the last two warm-up samples differ by less than `tolerance`
    (a fraction of the later one)."""
    if len(latencies) < 2:
        return False
    previous, last = latencies[-2], latencies[-1]
    return abs(last - previous) < tolerance * last
