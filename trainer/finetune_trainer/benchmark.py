"""`finetune benchmark --run URI`: measure a run's adapter against its latency SLA.

The recipe: read config.json; load each profile's prompts (prompts.py); load the adapter
(modeling.load_for_inference with the process's backend); evaluate it on held-out chats and
answer review prompts with and without it (evaluation.py, report/evaluation.json); merge it
into the weights when benchmark.mergeAdapter, as it would be served; for each profile
warm up until latency is stable and measure until the sequential SLA decision is made
(timing.measure_until asking finetune_core.sampling);
summarise the samples with the confidence bounds and the verdict's basis (latency.py); gate
(finetune_core.gate, with the review scores); write the report (report.py); with
promotion.export: merged, write the merged model to the run's merged/ (export.py); and,
last, report/benchmark.json, so a reader that finds benchmark.json finds a whole report.

stdout carries one JSON line per sample ({"profile", "sample"} or {"profile", "warmup"}) for
progress displays. Exit codes (finetune_core.exit_codes): EXIT_OK when the measurement
completed, whatever the verdict; EXIT_INVALID_INPUT when the input is unusable; EXIT_FAILED
on any other failure (both with error.json).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import sys
import tempfile
from pathlib import Path

from finetune_core.api import (
    BenchmarkReport,
    BenchmarkSpec,
    Metrics,
    ProfileResult,
    RunConfig,
    SlaProfile,
)
from finetune_core.clock import timestamp
from finetune_core.exit_codes import EXIT_INVALID_INPUT, EXIT_OK
from finetune_core.gate import judge, percentile_of
from finetune_core.layout import ErrorReport, RunPaths, alias_of
from finetune_core.promotion import read_champion
from finetune_core.sampling import INTERVAL_METHOD, VerdictBasis, decide, warmed_up
from finetune_core.store import ArtifactStore, InvalidFile, NotFound, open_run, read_model
from finetune_trainer import stage
from finetune_trainer.environment import describe_environment, library_versions
from finetune_trainer.latency import SampleTiming, summarize
from finetune_trainer.logs import setup_logging
from finetune_trainer.modeling import LoadedModel
from finetune_trainer.prompts import Prompt, encode_prompts, load_prompts
from finetune_trainer.report import ProfileSamples, ReportInputs, write_report
from finetune_trainer.stage import PodStage, StageFailure, invalid_input
from finetune_trainer.timing import generation_options, measure_until

log = logging.getLogger(__name__)

STAGE: PodStage = "benchmark"


def main(run_uri: str, round: int = 1) -> int:
    """The benchmark pod's entrypoint; see the module docstring for the exit codes."""
    setup_logging()
    try:
        store, prefix = open_run(run_uri)
        run = RunPaths.from_prefix(prefix)
    except ValueError as error:
        log.error("%s", error)
        return EXIT_INVALID_INPUT
    try:
        config = stage.read_config(store, run)
        clear_stale_error(store, run)
        with tempfile.TemporaryDirectory(prefix="finetune-benchmark-") as workdir:
            report = run_benchmark(store, run, config, Path(workdir), round)
    except StageFailure as failure:
        return stage.report(store, run, STAGE, failure)
    except Exception as error:  # the pod must leave error.json whatever went wrong
        log.exception("benchmark failed")
        return stage.report(store, run, STAGE, stage.unexpected(error, "BenchmarkFailed"))
    log.info(
        "benchmark %s: %s",
        "passed" if report.passed else "failed",
        "; ".join(report.reasons) or "every profile met its limit",
    )
    return EXIT_OK


def clear_stale_error(store: ArtifactStore, run: RunPaths) -> None:
    """A retry: the previous benchmark attempt's error.json no longer holds."""
    try:
        stale = read_model(store, run.error, ErrorReport)
    except InvalidFile:
        stale = None
    if stale is not None and stale.stage == STAGE:
        store.delete(run.error)


def run_benchmark(
    store: ArtifactStore, run: RunPaths, config: RunConfig, workdir: Path, round: int = 1
) -> BenchmarkReport:
    """Measure every SLA profile and write the report (report/, and report/rounds/<round>/
    to keep it beside the other rounds'); returns benchmark.json's content."""
    from finetune_trainer.backend import select_backend

    select_backend()  # before anything imports transformers (unsloth patches it)
    from finetune_trainer.evaluation import evaluate, read_held_out
    from finetune_trainer.modeling import merge_adapter

    spec = config.spec
    prompts = load_prompts(spec, workdir)
    held_out = read_held_out(spec, workdir)  # every line checked before a model is loaded
    adapter_dir = workdir / "adapter"
    loaded = load_adapter(store, run, config, adapter_dir)
    # Before any merge: the base model's review answers need the adapter disabled.
    evaluation = evaluate(spec, loaded, held_out)
    store.put_json(run.evaluation, evaluation.to_wire())
    if spec.benchmark.merge_adapter:
        loaded = merge_adapter(spec, loaded)
    measured = [
        measure_profile(loaded, profile, prompts[profile.name], spec.benchmark)
        for profile in spec.benchmark.sla
    ]
    metrics = read_model(store, run.metrics, Metrics)
    report = benchmark_report(config, loaded, measured, metrics)
    del loaded  # the merged export below loads its own copy of the weights
    verdict = judge(
        report,
        spec,
        metrics,
        read_champion(store, alias_of(spec, run.namespace)),
        version=run.version,
        evaluation=evaluation,
    )
    report.passed, report.reasons = verdict.passed, list(verdict.problems)
    try:
        loss_chart: bytes | None = store.get_bytes(f"{run.report}/loss.png")
    except NotFound:
        loss_chart = None
    inputs = ReportInputs(run, config, report, verdict, measured, metrics, loss_chart, evaluation)
    write_report(store, inputs, workdir / "report")
    if "merged" in spec.promotion.export:
        from finetune_trainer.export import export_merged

        export_merged(store, run, spec, adapter_dir, workdir)
    store.put_json(run.benchmark_report, report.to_wire())  # last: the report is complete
    keep_round(store, run, round, workdir / "report", report)
    return report


def keep_round(
    store: ArtifactStore, run: RunPaths, round: int, directory: Path, report: BenchmarkReport
) -> None:
    """A copy of this round's report under report/rounds/<round>/ (benchmark.json last: once
    it is there, the round is complete), so a re-benchmark does not erase the earlier one."""
    prefix = run.round_report(round)
    for path in sorted(directory.iterdir()):
        if path.is_file():
            store.put_file(f"{prefix}/{path.name}", path)
    store.put_json(run.round_benchmark_report(round), report.to_wire())


def load_adapter(
    store: ArtifactStore, run: RunPaths, config: RunConfig, adapter_dir: Path
) -> LoadedModel:
    """The base model with the run's adapter (not merged yet: see run_benchmark)."""
    from finetune_trainer.modeling import load_for_inference

    if not store.download_dir(run.adapter, adapter_dir):
        raise invalid_input("AdapterMissing", f"no adapter at {store.uri(run.adapter)}")
    loaded = load_for_inference(config.spec, adapter_dir)
    log.info("measuring on %s with %s (%s)", loaded.device, loaded.backend, loaded.dtype)
    return loaded


def sla_decision(
    benchmark: BenchmarkSpec, profile: SlaProfile, latencies: list[float]
) -> tuple[bool | None, VerdictBasis | None, float | None, float | None]:
    """(passed, basis, lower, upper) of the sequential decision on these latencies."""
    decision = decide(
        latencies,
        q=benchmark.percentile,
        limit=profile.max_latency_seconds,
        confidence=benchmark.confidence,
        margin=benchmark.decision_margin,
        initial=benchmark.samples,
        max_samples=benchmark.max_samples,
    )
    return decision.passed, decision.basis, decision.lower, decision.upper


def measure_profile(
    loaded: LoadedModel, profile: SlaProfile, prompts: list[Prompt], benchmark: BenchmarkSpec
) -> ProfileSamples:
    """Warm up until stable, then time generations of exactly maxNewTokens tokens until the
    SLA decision is made (at least `samples`, at most `maxSamples`)."""
    encoded = encode_prompts(loaded.model, loaded.tokenizer, loaded.device, prompts, profile)
    options = generation_options(loaded.tokenizer, profile.max_new_tokens)
    measurement = measure_until(
        loaded.model,
        encoded,
        options,
        max_warmup=benchmark.warmup,
        warmed_up=functools.partial(warmed_up, tolerance=benchmark.warmup_tolerance),
        samples=benchmark.samples,
        max_samples=benchmark.max_samples,
        go_on=lambda latencies: sla_decision(benchmark, profile, latencies)[1] is None,
        on_sample=functools.partial(_progress, profile.name),
    )
    timings = measurement.timings
    used = [index % len(encoded) for index in range(len(timings))]
    return ProfileSamples(
        profile,
        measurement.warmups,
        timings,
        sources=[prompts[i].source for i in used],
        prompt_tokens=[encoded[i]["input_ids"].shape[-1] for i in used],
    )


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


def profile_result(measured: ProfileSamples, benchmark: BenchmarkSpec) -> ProfileResult:
    profile, percentile = measured.profile, benchmark.percentile
    stats = summarize(measured.timings)
    passed, basis, lower, upper = sla_decision(
        benchmark, profile, [t.latency for t in measured.timings]
    )
    if basis is None:  # measure_until stops only once decided; should it not, the point
        value: float = getattr(stats, f"p{percentile}")
        passed, basis = value <= profile.max_latency_seconds, "pointEstimate"
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
        passed=passed,
        lower_bound=lower,
        upper_bound=upper,
        warmups=measured.warmup,
        verdict_basis=basis,
    )
    log.info(
        "profile %s: p%d %.3f s [%s] (limit %g s) after %d samples and %d warm-ups: %s (%s)",
        result.name,
        percentile,
        percentile_of(result, percentile),
        "-" if lower is None or upper is None else f"{lower:.3f}, {upper:.3f}",
        result.max_latency_seconds,
        stats.samples,
        measured.warmup,
        "pass" if result.passed else "FAIL",
        basis,
    )
    return result


def benchmark_report(
    config: RunConfig,
    loaded: LoadedModel,
    measured: list[ProfileSamples],
    metrics: Metrics | None,
) -> BenchmarkReport:
    """benchmark.json's content before the gate's verdict (passed=False until decided)."""
    spec = config.spec
    percentile = spec.benchmark.percentile
    metrics = metrics or Metrics()
    base_loss = metrics.base_eval_loss
    return BenchmarkReport(
        passed=False,
        percentile=percentile,
        confidence=spec.benchmark.confidence,
        interval_method=INTERVAL_METHOD,
        device=describe_environment(loaded.device, metrics.backend),
        profiles=[profile_result(m, spec.benchmark) for m in measured],
        eval_loss=metrics.eval_loss,
        base_eval_loss=base_loss,
        perplexity=metrics.perplexity,
        base_perplexity=None if base_loss is None else math.exp(base_loss),
        backend=loaded.backend,
        dtype=loaded.dtype,
        merged_adapter=spec.benchmark.merge_adapter,
        versions=library_versions(),
        measured_at=timestamp(),
    )
