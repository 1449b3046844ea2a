"""One timed generation, and a profile's worth of them.

Every sample generates exactly max_new_tokens tokens, greedily, with EOS suppressed until
then (vLLM's ignore-eos), one request at a time; a streamer records when each token arrives.
Warm-up generations run first and are not returned: `measure` runs a fixed number,
`measure_until` runs them until latency is stable and then measures until the SLA decision
asks for no more (the rules are finetune_core.sampling's).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from finetune_trainer.latency import SampleTiming
from finetune_trainer.stage import StageFailure


class MeasurementError(StageFailure):
    """The model did not generate what was asked (a failure the Job may retry)."""

    def __init__(self, message: str):
        super().__init__("MeasurementFailed", message)


class TokenClock:
    """A generate() streamer (transformers' BaseStreamer interface: put/end) that records when
    each new token arrives. generate() first puts the whole prompt, then each new token.

    It does not subclass BaseStreamer so that this module imports no transformers before
    backend.select_backend() has imported unsloth.
    """

    def __init__(self) -> None:
        self.prompt_seen = False
        self.times: list[float] = []

    def put(self, value: torch.Tensor) -> None:
        now = time.perf_counter()
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.times.extend([now] * value.numel())  # batch of one: one token per put

    def end(self) -> None:
        """Nothing to flush: times are recorded as tokens arrive."""


def synchronize() -> None:
    """Wait for queued GPU work, so the clock reads finished work."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def generation_options(tokenizer: Any, max_new_tokens: int) -> dict[str, Any]:
    """Greedy, exactly max_new_tokens: EOS is suppressed until then (min = max)."""
    return {
        "max_new_tokens": max_new_tokens,
        "min_new_tokens": max_new_tokens,
        "do_sample": False,
        "temperature": None,
        "top_p": None,
        "top_k": None,
        "pad_token_id": tokenizer.pad_token_id,
    }


def time_generation(
    model: Any, prompt: dict[str, torch.Tensor], options: dict[str, Any]
) -> SampleTiming:
    """Run one generation and time it; MeasurementError unless it made max_new_tokens."""
    expected = options["max_new_tokens"]
    clock = TokenClock()
    synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        output = model.generate(**prompt, streamer=clock, **options)
    synchronize()
    end = time.perf_counter()
    generated = output.shape[-1] - prompt["input_ids"].shape[-1]
    if generated != expected or len(clock.times) != expected:
        raise MeasurementError(
            f"asked for {expected} new tokens, generate returned {generated} "
            f"and streamed {len(clock.times)}"
        )
    return SampleTiming(tuple(t - start for t in clock.times), end - start)


def measure(
    model: Any,
    prompts: Sequence[dict[str, torch.Tensor]],
    options: dict[str, Any],
    samples: int,
    warmup: int,
    on_sample: Callable[[str, int, SampleTiming], None] | None = None,
) -> list[SampleTiming]:
    """`warmup` unrecorded generations, then `samples` timed ones; the prompts are cycled,
    each phase starting from the first prompt. Returns only the measured samples."""
    for index in range(warmup):
        timing = time_generation(model, prompts[index % len(prompts)], options)
        if on_sample:
            on_sample("warmup", index + 1, timing)
    measured = []
    for index in range(samples):
        timing = time_generation(model, prompts[index % len(prompts)], options)
        measured.append(timing)
        if on_sample:
            on_sample("sample", index + 1, timing)
    return measured


@dataclass(frozen=True)
class Measurement:
    """A profile's measured samples and how many warm-ups ran before them."""

    warmups: int
    timings: list[SampleTiming]


def measure_until(
    model: Any,
    prompts: Sequence[dict[str, torch.Tensor]],
    options: dict[str, Any],
    *,
    max_warmup: int,
    warmed_up: Callable[[list[float]], bool],
    samples: int,
    max_samples: int,
    go_on: Callable[[list[float]], bool],
    on_sample: Callable[[str, int, SampleTiming], None] | None = None,
) -> Measurement:
    """Warm up until `warmed_up(latencies so far)` or `max_warmup` generations; then time
    `samples` generations and, while `go_on(latencies so far)`, more, up to `max_samples`.
    The prompts are cycled, each phase starting from the first prompt."""
    warmup_latencies: list[float] = []
    while len(warmup_latencies) < max_warmup and not warmed_up(warmup_latencies):
        timing = time_generation(model, prompts[len(warmup_latencies) % len(prompts)], options)
        warmup_latencies.append(timing.latency)
        if on_sample:
            on_sample("warmup", len(warmup_latencies), timing)
    measured: list[SampleTiming] = []
    while len(measured) < samples or (
        len(measured) < max_samples and go_on([t.latency for t in measured])
    ):
        timing = time_generation(model, prompts[len(measured) % len(prompts)], options)
        measured.append(timing)
        if on_sample:
            on_sample("sample", len(measured), timing)
    return Measurement(len(warmup_latencies), measured)
