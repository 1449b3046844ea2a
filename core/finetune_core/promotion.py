"""Promotion: copy a run's adapter and report to models/<model>/<version>/ with a model card,
then move the models/<model>/current.json alias to it.

The alias is written last, so a reader that follows it never finds a half-copied model.
Promoting the same run again rewrites the same copy and leaves the alias as it is.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from finetune_core.api import BenchmarkReport, Metrics, ResolvedSpec
from finetune_core.clock import timestamp
from finetune_core.gate import percentile_of
from finetune_core.layout import CurrentAlias, RunPaths, current_alias, model_key, models_dir
from finetune_core.store import ArtifactStore, InvalidFile, read_model, read_model_if_valid

# How many earlier versions current.json remembers (newest first).
MAX_PREVIOUS = 10


class PromotionError(RuntimeError):
    """The run cannot be promoted (nothing to copy, or an unreadable alias)."""


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
        displaced = current.to_wire()
        del displaced["previous"]
        history = [displaced, *current.previous]
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
) -> str:
    """README.md of a promoted model: what it is, what it was trained on and how, how it did."""
    metrics = metrics or Metrics()
    lines = [
        f"# {run.version}",
        "",
        f"LoRA adapter for `{spec.model_id}`, fine-tuned by the FineTuneJob "
        f"`{run.namespace}/{run.name}` (generation {run.generation}).",
        "",
        f"- Location: `{uri}`",
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
    return "\n".join(lines) + "\n"


def _perplexity(eval_loss: float | None) -> float | None:
    return None if eval_loss is None else math.exp(eval_loss)


def read_champion(store: ArtifactStore, model: str) -> CurrentAlias | None:
    """The promoted version of a base model (models/<model>/current.json), if any."""
    key = current_alias(model)
    try:
        return read_model(store, key, CurrentAlias)
    except InvalidFile as error:
        raise PromotionError(str(error)) from error


def promote(
    store: ArtifactStore, run: RunPaths, spec: ResolvedSpec, now: datetime | None = None
) -> str:
    """Copy the run's adapter, report and a model card to models/<model>/<version>/, then
    point current.json at it. Returns the promoted copy's URI."""
    model = model_key(spec)
    target = f"{models_dir(model)}/{run.version}"
    if not store.copy_prefix(run.adapter, f"{target}/adapter"):
        raise PromotionError(f"no adapter to promote at {store.uri(run.adapter)}")
    store.copy_prefix(run.report, f"{target}/report")
    uri = store.uri(target)
    metrics = read_model_if_valid(store, run.metrics, Metrics)
    report = read_model_if_valid(store, run.benchmark_report, BenchmarkReport)
    card = model_card(run, spec, uri, metrics, report)
    store.put_bytes(f"{target}/README.md", card.encode(), "text/markdown")

    champion = read_champion(store, model)
    alias = next_alias(
        champion,
        version=run.version,
        uri=uri,
        promoted_at=timestamp(now),
        eval_loss=metrics.eval_loss if metrics else None,
    )
    if alias is not champion:
        store.put_json(current_alias(model), alias.to_wire())
    return uri
