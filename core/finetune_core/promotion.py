"""Promotion: copy a run's adapter (and, with promotion.export: merged, the merged model) and
report to models/<namespace>/<alias>/<version>/ with a model card, then move the alias
(`current.json` beside them) to it. Only objects are copied: the merged weights are written
by the benchmark stage, which has torch; the operator never loads a model.

The alias is written last, with a conditional write (compare-and-swap on its version), so a
reader that follows it never finds a half-copied model, two promotions to the same alias
cannot lose an entry, and a run is gated again against the champion read right before the
write. Promoting the same run again (a retry after a crash) changes nothing, also when a
newer champion has displaced it since.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from finetune_core import gate
from finetune_core.api import BenchmarkReport, EvaluationReport, Metrics, ResolvedSpec
from finetune_core.clock import timestamp
from finetune_core.gate import percentile_of
from finetune_core.layout import AliasPaths, CurrentAlias, RunPaths, alias_of
from finetune_core.store import ArtifactStore, InvalidFile, read_model, read_model_if_valid

# How many earlier versions current.json remembers (newest first).
MAX_PREVIOUS = 10
# Conditional writes that may lose to other writers before promotion gives up. Between
# attempts a writer waits a random while, up to twice as long each time (up to
# BACKOFF_CAP_SECONDS): writers that lost together would otherwise retry together and
# lose together again, and with many at once (an operator finishing many lifecycles of one
# alias together) some would run out of attempts.
MAX_ATTEMPTS = 16
BACKOFF_SECONDS = 0.02
BACKOFF_CAP_SECONDS = 1.0
_jitter = random.Random()


def _back_off(attempt: int) -> None:
    time.sleep(_jitter.uniform(0, min(BACKOFF_CAP_SECONDS, BACKOFF_SECONDS * 2**attempt)))


class PromotionError(RuntimeError):
    """The run cannot be promoted (nothing to copy, an unreadable alias, endless contention)."""


class AliasContended(PromotionError):
    """Other writers kept moving the alias: nothing is wrong with the run, and a later try
    (a promotion is idempotent) succeeds; the operator retries it instead of failing."""


class ChampionChanged(PromotionError):
    """Gated again against the alias as it is now, the run no longer passes."""

    def __init__(self, verdict: gate.Verdict):
        super().__init__(verdict.message)
        self.verdict = verdict


def next_alias(
    current: CurrentAlias | None,
    version: str,
    uri: str,
    promoted_at: str,
    eval_loss: float | None,
    keep: int = MAX_PREVIOUS,
) -> CurrentAlias:
    """The alias after promoting `version`. The displaced champion goes first in `previous`;
    a version never appears twice (promoting an earlier version again is a rollback), and
    promoting the current version again changes nothing."""
    if current is not None and current.version == version:
        return current
    history: list[dict[str, Any]] = []
    if current is not None:
        history = [_entry(current), *current.previous]
    history = [entry for entry in history if entry.get("version") != version][:keep]
    return CurrentAlias(
        version=version, uri=uri, promoted_at=promoted_at, eval_loss=eval_loss, previous=history
    )


def _number(value: float | int | None, fmt: str = ".4g") -> str:
    return "n/a" if value is None else format(value, fmt)


def model_card(
    run: RunPaths,
    spec: ResolvedSpec,
    uri: str,
    metrics: Metrics | None,
    report: BenchmarkReport | None,
    evaluation: EvaluationReport | None = None,
) -> str:
    """README.md of a promoted model: what it is, what it was trained on and how, how it did,
    and how to serve it."""
    metrics = metrics or Metrics()
    merged = "merged" in spec.promotion.export
    lines = [
        f"# {run.version}",
        "",
        f"LoRA adapter for `{spec.model_id}`, fine-tuned by the FineTuneJob "
        f"`{run.namespace}/{run.name}` (generation {run.generation})"
        + (", and the base model with the adapter merged into its weights." if merged else "."),
        "",
        f"- Location: `{uri}` (`adapter/`" + (", `merged/`" if merged else "") + ", `report/`)",
        f"- Base model: `{spec.model_id}`" + (f" (preset `{spec.preset}`)" if spec.preset else ""),
        f"- Dataset: `{spec.dataset.uri}`",
        f"- Dataset sha256: `{metrics.dataset_sha256 or 'n/a'}`",
        f"- Training run: `{run.prefix}`",
        "",
        "## Hyperparameters",
        "",
        "| Setting | Value |",
        "|---|---|",
    ]
    settings: dict[str, object] = {
        "LoRA r / alpha / dropout": f"{spec.lora_r} / {spec.lora_alpha} / {spec.lora_dropout}",
        "Target modules": ", ".join(spec.target_modules),
        "Max sequence length": spec.max_seq_length,
        "Epochs": spec.epochs,
        "Max steps": spec.max_steps if spec.max_steps is not None else "n/a",
        "Batch size x accumulation": f"{spec.batch_size} x {spec.gradient_accumulation_steps}",
        "Learning rate / warm-up steps": f"{spec.learning_rate:g} / {spec.warmup_steps}",
        "Optimizer": spec.optimizer,
        "Precision": spec.precision,
        "4-bit base": spec.load_in_4bit,
        "Validation split / seed": f"{spec.dataset.validation_split} / {spec.seed}",
    }
    lines += [f"| {key} | {value} |" for key, value in settings.items()]
    lines += [
        "",
        "## Metrics",
        "",
        "| Metric | Adapter | Base model |",
        "|---|---|---|",
        f"| Eval loss | {_number(metrics.eval_loss)} | {_number(metrics.base_eval_loss)} |",
        f"| Perplexity | {_number(metrics.perplexity)} | "
        f"{_number(_perplexity(metrics.base_eval_loss))} |",
        f"| Train loss | {_number(metrics.train_loss)} | |",
        f"| Train/eval conversations | {_number(metrics.train_rows, 'd')} / "
        f"{_number(metrics.eval_rows, 'd')} | |",
        "",
        "## Latency SLA",
        "",
    ]
    if report is None or not report.profiles:
        lines.append("No benchmark report.")
    else:
        pct = report.percentile or spec.benchmark.percentile
        lines += [
            f"Measured on {report.device or 'an unrecorded device'}; the verdict holds "
            f"p{pct} of end-to-end latency to the limit.",
            "",
            f"| Profile | New tokens | p50 s | p{pct} s | Limit s | TTFT p50 s | Tokens/s "
            "| Verdict |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for p in report.profiles:
            cells = [
                p.name,
                _number(p.max_new_tokens, "d"),
                _number(p.p50, ".3g"),
                _number(percentile_of(p, pct), ".3g"),
                _number(p.max_latency_seconds, "g"),
                _number(p.ttft_p50, ".3g"),
                _number(p.tokens_per_second, ".3g"),
                "pass" if p.passed else "fail",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    lines += _evaluation_lines(evaluation)
    lines += serving_lines(run, spec, uri)
    return "\n".join(lines) + "\n"


def _evaluation_lines(evaluation: EvaluationReport | None) -> list[str]:
    if evaluation is None:
        return []
    lines = [
        "",
        "## Held-out evaluation",
        "",
        f"On `{evaluation.dataset}`: eval loss {_number(evaluation.eval_loss)}, perplexity "
        f"{_number(evaluation.perplexity)}, {_number(evaluation.bits_per_byte)} bits per byte.",
    ]
    if evaluation.answers:
        lines += [
            "",
            f"Review answers ({len(evaluation.answers)} validation prompts, greedy; the report "
            "shows them side by side):",
            "",
            "| | BLEU | ROUGE-L |",
            "|---|---|---|",
            f"| Adapter | {_number(evaluation.adapter_bleu, '.2f')} | "
            f"{_number(evaluation.adapter_rouge_l, '.3f')} |",
            f"| Base model | {_number(evaluation.base_bleu, '.2f')} | "
            f"{_number(evaluation.base_rouge_l, '.3f')} |",
        ]
    return lines


# The ranks vLLM's --max-lora-rank accepts.
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def vllm_lora_rank(r: int) -> int:
    """The smallest --max-lora-rank vLLM accepts that holds an adapter of rank r."""
    return next((rank for rank in VLLM_LORA_RANKS if rank >= r), r)


def serving_lines(run: RunPaths, spec: ResolvedSpec, uri: str) -> list[str]:
    """How to serve the promoted model with vLLM and with Text Generation Inference: the
    adapter as a LoRA over the base model, and (promotion.export: merged) the merged model.
    Both servers load from a local directory, so the commands start by copying it there."""
    name, rank = run.version, vllm_lora_rank(spec.lora_r)
    lines = [
        "",
        "## Serving",
        "",
        "Copy the model out of the store first (any S3 client; with MinIO add "
        "`--endpoint-url http://<minio>:9000`):",
        "",
        "```sh",
        f"aws s3 cp --recursive {uri}/ ./{name}/",
        "```",
        "",
        "The adapter as a LoRA over the base model, with vLLM and with Text Generation "
        "Inference (on AMD GPUs use the `-rocm` TGI image and pass "
        "`--device /dev/kfd --device /dev/dri` instead of `--gpus all`):",
        "",
        "```sh",
        f"vllm serve {spec.model_id} --enable-lora --max-lora-rank {rank} \\",
        f"  --lora-modules {name}=./{name}/adapter",
        f"docker run --gpus all --shm-size 1g -p 8080:80 -v $PWD/{name}:/data \\",
        "  ghcr.io/huggingface/text-generation-inference:latest \\",
        f"  --model-id {spec.model_id} --lora-adapters {name}=/data/adapter",
        "```",
        "",
        f'Requests name the adapter: `"model": "{name}"` (vLLM\'s OpenAI API) or '
        f'`"parameters": {{"adapter_id": "{name}"}}` (TGI).',
    ]
    if "merged" in spec.promotion.export:
        lines += [
            "",
            "The merged model (safetensors, Hugging Face layout), served like any model:",
            "",
            "```sh",
            f"vllm serve ./{name}/merged --served-model-name {name}",
            f"docker run --gpus all --shm-size 1g -p 8080:80 -v $PWD/{name}:/data \\",
            "  ghcr.io/huggingface/text-generation-inference:latest --model-id /data/merged",
            "```",
        ]
    return lines


def _perplexity(eval_loss: float | None) -> float | None:
    return None if eval_loss is None else math.exp(eval_loss)


def _entry(alias: CurrentAlias) -> dict[str, Any]:
    entry = alias.to_wire()
    del entry["previous"]
    return entry


def read_champion(store: ArtifactStore, alias: AliasPaths) -> CurrentAlias | None:
    """The alias's current version, if any; an alias written before aliases were per
    namespace (models/<alias>/current.json) is read as a fallback until the first promotion
    to the new place."""
    champion, _ = _read_alias(store, alias)
    return champion


def _read_alias(store: ArtifactStore, alias: AliasPaths) -> tuple[CurrentAlias | None, str | None]:
    try:
        raw, version = store.get_json_versioned(alias.current)
        if raw is not None:
            return CurrentAlias.model_validate(raw), version
        return read_model(store, alias.legacy_current, CurrentAlias), None
    except (InvalidFile, ValueError) as error:
        raise PromotionError(f"{store.uri(alias.current)} is not a valid alias: {error}") from error


@dataclass(frozen=True)
class StagedPromotion:
    """A run's copy under the alias's folder, written and not yet pointed at: what moving
    the alias needs."""

    alias: AliasPaths
    version: str
    uri: str
    metrics: Metrics | None
    report: BenchmarkReport | None
    evaluation: EvaluationReport | None


def stage_promotion(
    store: ArtifactStore,
    run: RunPaths,
    spec: ResolvedSpec,
    *,
    version: str | None = None,
    card_extra: str = "",
) -> StagedPromotion:
    """Copy the run's adapter and report to the alias's folder and write its model card.
    `version` names the copy (default: the run's `<name>-g<generation>`; a tournament's
    winner gets `<tournament>-g<gen>-<candidate>`); `card_extra` is appended to the model
    card (a tournament's leaderboard)."""
    alias = alias_of(spec, run.namespace)
    named = version or run.version
    target = alias.version_dir(named)
    if not store.copy_prefix(run.adapter, f"{target}/adapter"):
        raise PromotionError(f"no adapter to promote at {store.uri(run.adapter)}")
    if "merged" in spec.promotion.export and not store.copy_prefix(run.merged, f"{target}/merged"):
        raise PromotionError(
            f"promotion.export asks for merged, but there is no merged model at "
            f"{store.uri(run.merged)} (the benchmark stage writes it)"
        )
    store.copy_prefix(run.report, f"{target}/report")
    uri = store.uri(target)
    metrics = read_model_if_valid(store, run.metrics, Metrics)
    report = read_model_if_valid(store, run.benchmark_report, BenchmarkReport)
    evaluation = read_model_if_valid(store, run.evaluation, EvaluationReport)
    card = model_card(run, spec, uri, metrics, report, evaluation).replace(
        f"# {run.version}\n", f"# {named}\n", 1
    )
    card += card_extra
    store.put_bytes(f"{target}/README.md", card.encode(), "text/markdown")
    return StagedPromotion(alias, named, uri, metrics, report, evaluation)


def move_alias(
    store: ArtifactStore, staged: StagedPromotion, spec: ResolvedSpec, now: datetime | None = None
) -> str:
    """Point the alias at a staged copy (a conditional write, retried while other writers
    move it); returns the copy's URI. ChampionChanged when the champion read right before
    the write beats the run."""
    alias, named, report, metrics = staged.alias, staged.version, staged.report, staged.metrics
    for attempt in range(MAX_ATTEMPTS):
        if attempt:
            _back_off(attempt)
        champion, version = _read_alias(store, alias)
        if champion is not None and named in _versions(champion):
            return staged.uri  # promoted before (a retry): never displace what came since
        if report is not None:
            verdict = gate.judge(
                report, spec, metrics, champion, version=named, evaluation=staged.evaluation
            )
            if not verdict.passed:
                raise ChampionChanged(verdict)
        moved = next_alias(
            champion,
            version=named,
            uri=staged.uri,
            promoted_at=timestamp(now),
            eval_loss=metrics.eval_loss if metrics else None,
        )
        if store.put_json_if(alias.current, moved.to_wire(), version):
            return staged.uri
    raise AliasContended(f"{store.uri(alias.current)} kept changing; promotion gave up")


def promote(
    store: ArtifactStore,
    run: RunPaths,
    spec: ResolvedSpec,
    now: datetime | None = None,
    *,
    version: str | None = None,
    card_extra: str = "",
) -> str:
    """Stage the run's copy, then move the alias to it (see stage_promotion, move_alias).
    Returns the promoted copy's URI."""
    staged = stage_promotion(store, run, spec, version=version, card_extra=card_extra)
    return move_alias(store, staged, spec, now)


def _versions(champion: CurrentAlias) -> set[str]:
    return {champion.version} | {str(entry.get("version")) for entry in champion.previous}


def rollback(
    store: ArtifactStore, alias: AliasPaths, version: str | None = None, now: datetime | None = None
) -> CurrentAlias:
    """Point the alias back at one of its previous versions (default: the one before the
    current); the displaced version goes into the history like any other."""
    for attempt in range(MAX_ATTEMPTS):
        if attempt:
            _back_off(attempt)
        champion, stored = _read_alias(store, alias)
        if champion is None or not champion.previous:
            raise PromotionError(f"{store.uri(alias.current)} has no earlier version to go back to")
        wanted = version or str(champion.previous[0].get("version"))
        entry = next((e for e in champion.previous if e.get("version") == wanted), None)
        if entry is None:
            known = ", ".join(str(e.get("version")) for e in champion.previous)
            raise PromotionError(f"{wanted} is not an earlier version of the alias ({known})")
        history = [_entry(champion)] + [e for e in champion.previous if e is not entry]
        moved = CurrentAlias(
            version=wanted,
            uri=str(entry.get("uri")),
            promoted_at=timestamp(now),
            eval_loss=_float(entry.get("evalLoss")),
            action="rollback",
            previous=history[:MAX_PREVIOUS],
        )
        if store.put_json_if(alias.current, moved.to_wire(), stored):
            return moved
    raise PromotionError(f"{store.uri(alias.current)} kept changing; rollback gave up")


def _float(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None
