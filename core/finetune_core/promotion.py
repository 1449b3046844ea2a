"""Promotion: copy a run's adapter and report to models/<namespace>/<alias>/<version>/ with a
model card, then move the alias (`current.json` beside them) to it.

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
from datetime import datetime
from typing import Any

from finetune_core import gate
from finetune_core.api import BenchmarkReport, Metrics, ResolvedSpec
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


def promote(
    store: ArtifactStore, run: RunPaths, spec: ResolvedSpec, now: datetime | None = None
) -> str:
    """Copy the run's adapter, report and a model card to the alias's folder, then point the
    alias at it. Returns the promoted copy's URI; ChampionChanged when the champion read
    right before the write beats the run."""
    alias = alias_of(spec, run.namespace)
    target = alias.version_dir(run.version)
    if not store.copy_prefix(run.adapter, f"{target}/adapter"):
        raise PromotionError(f"no adapter to promote at {store.uri(run.adapter)}")
    store.copy_prefix(run.report, f"{target}/report")
    uri = store.uri(target)
    metrics = read_model_if_valid(store, run.metrics, Metrics)
    report = read_model_if_valid(store, run.benchmark_report, BenchmarkReport)
    card = model_card(run, spec, uri, metrics, report)
    store.put_bytes(f"{target}/README.md", card.encode(), "text/markdown")
    for attempt in range(MAX_ATTEMPTS):
        if attempt:
            _back_off(attempt)
        champion, version = _read_alias(store, alias)
        if champion is not None and run.version in _versions(champion):
            return uri  # promoted before (a retry): never displace what came since
        if report is not None:
            verdict = gate.judge(report, spec, metrics, champion, version=run.version)
            if not verdict.passed:
                raise ChampionChanged(verdict)
        moved = next_alias(
            champion,
            version=run.version,
            uri=uri,
            promoted_at=timestamp(now),
            eval_loss=metrics.eval_loss if metrics else None,
        )
        if store.put_json_if(alias.current, moved.to_wire(), version):
            return uri
    raise AliasContended(f"{store.uri(alias.current)} kept changing; promotion gave up")


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
