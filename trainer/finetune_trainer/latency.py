"""Latency statistics of a benchmark: numbers in, numbers out (no model, no clock).

Definitions follow vLLM bench and GuideLLM:
- time to first token (TTFT): from the call to generate until the first new token exists;
- inter-token latency (ITL): (last token time - first token time) / (tokens - 1);
- end-to-end latency: from the call to generate until it returns;
- output tokens/s of a sample: generated tokens / end-to-end latency.
Percentiles interpolate linearly between the closest ranks (numpy's default method).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from finetune_core.sampling import percentile

REPORTED_PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True)
class SampleTiming:
    """One measured generation. Times are seconds since the call to generate."""

    token_times: tuple[float, ...]
    end: float

    def __post_init__(self) -> None:
        if not self.token_times:
            raise ValueError("a sample must have generated at least one token")
        if any(b < a for a, b in zip(self.token_times, self.token_times[1:], strict=False)):
            raise ValueError("token times must not decrease")
        if self.token_times[0] < 0 or self.end < self.token_times[-1]:
            raise ValueError("token times must lie between the start and the end of the call")

    @property
    def tokens(self) -> int:
        return len(self.token_times)

    @property
    def ttft(self) -> float:
        return self.token_times[0]

    @property
    def itl(self) -> float:
        """Mean gap between consecutive tokens; 0 for a single token."""
        if self.tokens == 1:
            return 0.0
        return (self.token_times[-1] - self.token_times[0]) / (self.tokens - 1)

    @property
    def latency(self) -> float:
        return self.end

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.end if self.end > 0 else math.inf


@dataclass(frozen=True)
class ProfileStats:
    """Summary of one profile's measured samples (seconds; tokens/s for throughput)."""

    samples: int
    p50: float
    p90: float
    p95: float
    p99: float
    max: float
    ttft_p50: float
    itl_p50: float
    tokens_per_second: float


def summarize(samples: Sequence[SampleTiming]) -> ProfileStats:
    """Statistics over measured samples (warm-ups must not be passed in)."""
    if not samples:
        raise ValueError("no measured samples to summarize")
    latencies = [s.latency for s in samples]
    return ProfileStats(
        samples=len(samples),
        p50=percentile(latencies, 50),
        p90=percentile(latencies, 90),
        p95=percentile(latencies, 95),
        p99=percentile(latencies, 99),
        max=max(latencies),
        ttft_p50=percentile([s.ttft for s in samples], 50),
        itl_p50=percentile([s.itl for s in samples], 50),
        tokens_per_second=percentile([s.tokens_per_second for s in samples], 50),
    )
