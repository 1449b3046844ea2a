"""`finetune benchmark --run URI`: measure a run's adapter against its latency SLA.

The adapter is loaded the way it would be served (modeling.load_for_inference: unsloth's
inference mode on a GPU, transformers elsewhere; merged when benchmark.mergeAdapter). Every
sample generates exactly maxNewTokens tokens, greedily, with EOS suppressed until then
(vLLM's ignore-eos), one request at a time. Prompts are chat-templated and tokenized before
the clock starts. Warm-up samples run first and are left out of every statistic.

Output: report/samples.json (every measured sample), report/latency-*.png, report/index.html
and, last, report/benchmark.json, so a reader that finds benchmark.json finds a whole report.
stdout carries one JSON line per sample ({"profile", "sample"} or {"profile", "warmup"}) for
progress displays. Exit 0 when the measurement completed, whatever the verdict; 3 when the
input is unusable; 1 on any other failure (both with error.json).
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import logging
import math
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ValidationError

from finetune_core.api import BenchmarkReport, Metrics, ProfileResult, RunConfig, SlaProfile
from finetune_core.exit_codes import EXIT_INVALID_INPUT
from finetune_core.gate import judge, percentile_of, profile_meets_sla
from finetune_core.layout import ErrorReport, RunPaths, alias_of
from finetune_core.promotion import read_champion, timestamp
from finetune_core.store import ArtifactStore, NotFound, open_run
from finetune_trainer import data, modeling
from finetune_trainer.latency import SampleTiming, summarize
from finetune_trainer.logs import setup_logging
from finetune_trainer.report import ProfileSamples, ReportInputs, slug, write_report

log = logging.getLogger(__name__)

EXIT_FAILED = 1
LIBRARIES = ("torch", "transformers", "peft", "accelerate", "unsloth", "bitsandbytes")


class InvalidInput(Exception):
    """The run's input cannot be measured: retrying will not help (exit 3)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class MeasurementError(RuntimeError):
    """The model did not generate what was asked (exit 1)."""


# ---------------------------------------------------------------- one timed generation


class TokenClock:
    """A generate() streamer (transformers' BaseStreamer interface: put/end) that records when
    each new token arrives. generate() first puts the whole prompt, then each new token.

    It does not subclass BaseStreamer so that this module imports no transformers before
    modeling.select_backend() has imported unsloth.
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


# ---------------------------------------------------------------- prompts


@dataclass(frozen=True)
class Prompt:
    """A conversation cut after its last user turn, and where it came from."""

    source: str
    messages: data.Conversation


def up_to_last_user_turn(conversation: data.Conversation) -> data.Conversation | None:
    """The conversation up to and including its last user message; None without one."""
    users = [i for i, message in enumerate(conversation) if message["role"] == "user"]
    return conversation[: users[-1] + 1] if users else None


def as_prompts(rows: list[tuple[str, data.Conversation]]) -> list[Prompt]:
    """Prompts from (where, conversation) rows; a row without a user turn is an input error."""
    prompts = []
    for source, row in rows:
        messages = up_to_last_user_turn(row)
        if messages is None:
            raise InvalidInput("InvalidPrompts", f"{source}: no user message to prompt with")
        prompts.append(Prompt(source, messages))
    return prompts


def load_prompts(config: RunConfig, workdir: Path) -> dict[str, list[Prompt]]:
    """Each profile's prompts: its own prompts file, else the validation split's user turns
    (the trainer's split: same rows, validationSplit and seed)."""
    spec = config.spec
    prompts: dict[str, list[Prompt]] = {}
    validation: list[Prompt] | None = None
    for profile in spec.benchmark.sla:
        if profile.prompts:
            where = f"profile {profile.name}: prompts {profile.prompts}"
            try:
                path = data.fetch(profile.prompts, workdir / "prompts" / slug(profile.name))
                numbered = data.read_numbered(path, require_assistant=False)
            except (data.DatasetError, OSError) as error:
                raise InvalidInput("InvalidPrompts", f"{where}: {error}") from error
            prompts[profile.name] = as_prompts([(f"{where} line {n}", row) for n, row in numbered])
            continue
        if validation is None:
            try:
                path = data.fetch(spec.dataset.uri, workdir / "dataset")
                numbered = data.read_numbered(path)
                _, held_out = data.split_indices(
                    len(numbered), spec.dataset.validation_split, spec.seed
                )
            except (data.DatasetError, OSError) as error:
                raise InvalidInput("InvalidDataset", f"dataset: {error}") from error
            validation = as_prompts(
                [
                    (f"validation row (dataset line {numbered[i][0]})", numbered[i][1])
                    for i in held_out
                ]
            )
        prompts[profile.name] = validation
    return prompts


def encode(
    loaded: modeling.LoadedModel, prompts: list[Prompt], profile: SlaProfile
) -> list[dict[str, torch.Tensor]]:
    """Chat-template and tokenize the prompts onto the model's device; a prompt that leaves
    no room for maxNewTokens in the model's context is an input error."""
    context = getattr(loaded.model.config, "max_position_embeddings", None)
    encoded = []
    for prompt in prompts:
        batch = loaded.tokenizer.apply_chat_template(
            prompt.messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        tensors = {key: batch[key].to(loaded.device) for key in ("input_ids", "attention_mask")}
        length = tensors["input_ids"].shape[-1]
        if context is not None and length + profile.max_new_tokens > context:
            raise InvalidInput(
                "PromptTooLong",
                f"profile {profile.name}: {prompt.source} has {length} tokens; with maxNewTokens "
                f"{profile.max_new_tokens} it exceeds the model's context of {context} tokens",
            )
        encoded.append(tensors)
    return encoded


# ---------------------------------------------------------------- environment


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape the measurement (installed ones only)."""
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    if torch.version.hip:
        versions["rocm"] = str(torch.version.hip)
    elif torch.version.cuda and torch.cuda.is_available():
        versions["cuda"] = str(torch.version.cuda)
    return versions


def describe_device(device: str) -> str:
    """'cuda: AMD Instinct MI300X' or 'cpu: <model name>, 2 threads'."""
    if device.startswith("cuda"):
        return f"cuda: {torch.cuda.get_device_name(0)}"
    name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"cpu: {name}, {torch.get_num_threads()} threads"


# ---------------------------------------------------------------- the run


def _read(store: ArtifactStore, key: str, model: type[BaseModel]) -> Any:
    raw = store.get_json_or_none(key)
    return None if raw is None else model.model_validate(raw)


def _perplexity(loss: float | None) -> float | None:
    return None if loss is None else math.exp(loss)


def profile_result(
    profile: SlaProfile, timings: list[SampleTiming], percentile: int
) -> ProfileResult:
    stats = summarize(timings)
    result = ProfileResult(
        name=profile.name,
        max_new_tokens=profile.max_new_tokens,
        max_latency_seconds=profile.max_latency_seconds,
        samples=stats.samples,
        p50=stats.p50,
        p90=stats.p90,
        p95=stats.p95,
        p99=stats.p99,
        max=stats.max,
        ttft_p50=stats.ttft_p50,
        itl_p50=stats.itl_p50,
        tokens_per_second=stats.tokens_per_second,
    )
    result.passed = profile_meets_sla(result, percentile, profile.max_latency_seconds)
    return result


def _progress(profile: str, kind: str, number: int, timing: SampleTiming) -> None:
    """One stdout JSON line per generation, for progress displays (`finetune run`)."""
    event = {
        "profile": profile,
        kind: number,
        "latency": round(timing.latency, 4),
        "ttft": round(timing.ttft, 4),
        "tokens": timing.tokens,
    }
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def measure_profile(
    loaded: modeling.LoadedModel,
    profile: SlaProfile,
    prompts: list[Prompt],
    warmup: int,
    samples: int,
) -> ProfileSamples:
    """Warm up, then time `samples` generations of exactly maxNewTokens tokens."""
    encoded = encode(loaded, prompts, profile)
    options = generation_options(loaded.tokenizer, profile.max_new_tokens)
    timings = measure(
        loaded.model, encoded, options, samples, warmup, functools.partial(_progress, profile.name)
    )
    used = [index % len(encoded) for index in range(len(timings))]
    return ProfileSamples(
        profile,
        warmup,
        timings,
        sources=[prompts[i].source for i in used],
        prompt_tokens=[encoded[i]["input_ids"].shape[-1] for i in used],
    )


def run_benchmark(
    store: ArtifactStore, run: RunPaths, config: RunConfig, workdir: Path
) -> BenchmarkReport:
    """Measure every SLA profile and write the report; returns benchmark.json's content."""
    spec = config.spec
    prompts = load_prompts(config, workdir)
    adapter_dir = workdir / "adapter"
    if not store.download_dir(run.adapter, adapter_dir):
        raise InvalidInput("AdapterMissing", f"no adapter at {store.uri(run.adapter)}")
    loaded = modeling.load_for_inference(spec, adapter_dir, merge=spec.benchmark.merge_adapter)
    log.info("measuring on %s with %s (%s)", loaded.device, loaded.backend, loaded.dtype)

    percentile = spec.benchmark.percentile
    measured = [
        measure_profile(
            loaded, profile, prompts[profile.name], spec.benchmark.warmup, spec.benchmark.samples
        )
        for profile in spec.benchmark.sla
    ]
    results = [profile_result(m.profile, m.timings, percentile) for m in measured]
    for result in results:
        log.info(
            "profile %s: p%d %.3f s (limit %g s), %s",
            result.name,
            percentile,
            percentile_of(result, percentile),
            result.max_latency_seconds,
            "pass" if result.passed else "FAIL",
        )

    metrics: Metrics | None = _read(store, run.metrics, Metrics)
    report = BenchmarkReport(
        passed=False,
        percentile=percentile,
        device=describe_device(loaded.device),
        profiles=results,
        eval_loss=metrics.eval_loss if metrics else None,
        base_eval_loss=metrics.base_eval_loss if metrics else None,
        perplexity=metrics.perplexity if metrics else None,
        base_perplexity=_perplexity(metrics.base_eval_loss if metrics else None),
        backend=loaded.backend,
        dtype=loaded.dtype,
        merged_adapter=spec.benchmark.merge_adapter,
        versions=library_versions(),
        measured_at=timestamp(datetime.now(UTC)),
    )
    champion = read_champion(store, alias_of(spec, run.namespace))
    verdict = judge(report, spec, metrics, champion, version=run.version)
    report.passed, report.reasons = verdict.passed, list(verdict.problems)
    try:
        loss_chart: bytes | None = store.get_bytes(f"{run.report}/loss.png")
    except NotFound:
        loss_chart = None
    inputs = ReportInputs(run, config, report, verdict, measured, metrics, loss_chart)
    write_report(store, inputs, workdir / "report")
    store.put_json(run.benchmark_report, report.to_wire())  # last: the report is complete
    return report


def _fail(store: ArtifactStore, run: RunPaths, reason: str, message: str, code: int) -> int:
    log.error("benchmark failed (%s): %s", reason, message)
    store.put_json(
        run.error, ErrorReport(stage="benchmark", reason=reason, message=message).to_wire()
    )
    return code


def main(run_uri: str) -> int:
    """The benchmark pod's entrypoint; see the module docstring for the exit codes."""
    setup_logging()
    try:
        store, prefix = open_run(run_uri)
        run = RunPaths.from_prefix(prefix)
    except ValueError as error:
        log.error("%s", error)
        return EXIT_INVALID_INPUT
    try:
        config = RunConfig.model_validate(store.get_json(run.config))
    except (ValidationError, ValueError, KeyError) as error:
        return _fail(
            store, run, "InvalidConfig", f"{store.uri(run.config)}: {error}", EXIT_INVALID_INPUT
        )
    stale = store.get_json_or_none(run.error)
    if isinstance(stale, dict) and stale.get("stage") == "benchmark":
        store.delete(run.error)  # a retry: the previous attempt's failure no longer holds
    modeling.select_backend()  # before anything imports transformers (unsloth patches it)
    try:
        with tempfile.TemporaryDirectory(prefix="finetune-benchmark-") as workdir:
            report = run_benchmark(store, run, config, Path(workdir))
    except InvalidInput as error:
        return _fail(store, run, error.reason, str(error), EXIT_INVALID_INPUT)
    except MeasurementError as error:
        return _fail(store, run, "MeasurementFailed", str(error), EXIT_FAILED)
    except Exception as error:  # the pod must leave error.json whatever went wrong
        log.exception("benchmark failed")
        return _fail(store, run, "BenchmarkFailed", f"{type(error).__name__}: {error}", EXIT_FAILED)
    log.info(
        "benchmark %s: %s",
        "passed" if report.passed else "failed",
        "; ".join(report.reasons) or "every profile met its limit",
    )
    return 0
