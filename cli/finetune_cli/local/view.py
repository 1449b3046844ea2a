"""How local runs look in a terminal: `finetune runs`, `finetune show` and the summary that
`finetune run` ends with (the same rendering, so the three never disagree)."""

from __future__ import annotations

import math

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from finetune_core.api import (
    BenchmarkReport,
    BenchmarkSpec,
    Cost,
    EvaluationSummary,
    FineTuneJobStatus,
    Metrics,
)
from finetune_core.exit_codes import EXIT_FAILED, EXIT_OK
from finetune_core.gate import BASIS_WORDS, interval_of, percentile_of, profile_verdict
from finetune_core.layout import model_key
from finetune_core.runs import RunSnapshot, UnknownRun, all_runs, newest_of
from finetune_core.store import ArtifactStore, open_store

PHASE_STYLES = {
    "Promoted": "bold green",
    "Passed": "bold green",
    "AwaitingApproval": "bold yellow",
    "Rejected": "bold red",
    "Failed": "bold red",
}


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _number(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _phase(phase: str | None) -> Text:
    return Text(phase or "Unknown", style=PHASE_STYLES.get(phase or "", "bold"))


def sla_verdict(status: FineTuneJobStatus) -> str:
    """Passed / Failed once measured, else '-'."""
    if status.sla:
        return status.sla
    if status.benchmark is None:
        return "-"
    return "Passed" if status.benchmark.passed else "Failed"


def _with_bounds(value: float | None, interval: tuple[float, float] | None) -> str:
    """'2.31 s [2.10, 2.60]': the gated percentile and its confidence bounds, when known."""
    if interval is None:
        return _seconds(value)
    return f"{_seconds(value)} [{interval[0]:.2f}, {interval[1]:.2f}]"


def sla_table(report: BenchmarkReport, benchmark: BenchmarkSpec) -> Table:
    """One row per SLA profile of the spec: latency at p50 and at the gated percentile with
    its confidence bounds, the limit, the samples (and warm-ups) measured, and the gate's
    verdict with its basis (recomputed from the numbers, as the gate does)."""
    percentile = benchmark.percentile
    results = {result.name: result for result in report.profiles}
    title = f"Latency SLA (p{percentile} <= limit"
    if report.confidence is not None:
        title += f"; [{report.confidence * 100:g} % confidence interval]"
    table = Table(title=title + ")", title_justify="left")
    headers = ("Profile", "Tokens", "p50", f"p{percentile}", "Limit", "Samples", "Tokens/s")
    for header in (*headers, "Verdict"):
        table.add_column(header, justify="left" if header in {"Profile", "Verdict"} else "right")
    for profile in benchmark.sla:
        result = results.get(profile.name)
        limit = profile.max_latency_seconds
        decided = (
            None
            if result is None
            else profile_verdict(result, percentile, limit, benchmark.decision_margin)
        )
        if result is None or decided is None:
            table.add_row(
                profile.name,
                str(profile.max_new_tokens),
                "-",
                "-",
                _seconds(limit),
                "-",
                "-",
                Text("not measured", "red"),
            )
            continue
        met, basis = decided
        samples = "-" if result.samples is None else str(result.samples)
        if result.warmups is not None:
            samples += f" (+{result.warmups} warm-up)"
        verdict = Text("pass", "green") if met else Text("FAIL", "bold red")
        if result.verdict_basis is not None or interval_of(result) is not None:
            verdict.append(f" ({BASIS_WORDS[basis]})")
        table.add_row(
            profile.name,
            str(profile.max_new_tokens),
            _seconds(result.p50),
            _with_bounds(percentile_of(result, percentile), interval_of(result)),
            _seconds(limit),
            samples,
            _number(result.tokens_per_second, 1),
            verdict,
        )
    return table


def metrics_table(metrics: Metrics) -> Table:
    """Training results next to the base model's, on the same validation split."""
    table = Table(title="Training", title_justify="left", show_header=False)
    table.add_column("Metric")
    table.add_column("Value", justify="right")
    table.add_row("train loss", _number(metrics.train_loss))
    base = metrics.base_eval_loss
    table.add_row(
        "eval loss", _number(metrics.eval_loss) + ("" if base is None else f" (base {base:.4f})")
    )
    perplexity = metrics.perplexity
    if perplexity is None and metrics.eval_loss is not None:
        perplexity = math.exp(metrics.eval_loss)
    base_perplexity = None if base is None else math.exp(base)
    table.add_row(
        "perplexity",
        _number(perplexity, 2)
        + ("" if base_perplexity is None else f" (base {base_perplexity:.2f})"),
    )
    if metrics.train_runtime_seconds is not None:
        table.add_row("train time", f"{metrics.train_runtime_seconds:.0f} s")
    return table


def evaluation_table(evaluation: EvaluationSummary) -> Table:
    """Bits per byte on the held-out chats, and the review answers' scores, adapter first."""
    table = Table(title="Evaluation", title_justify="left", show_header=False)
    table.add_column("Metric")
    table.add_column("Value", justify="right")
    table.add_row("bits per byte", _number(evaluation.bits_per_byte))
    if evaluation.samples:
        table.add_row(
            f"BLEU ({evaluation.samples} answers)",
            f"{_number(evaluation.adapter_bleu, 2)} (base {_number(evaluation.base_bleu, 2)})",
        )
        table.add_row(
            "ROUGE-L",
            f"{_number(evaluation.adapter_rouge_l, 3)} "
            f"(base {_number(evaluation.base_rouge_l, 3)})",
        )
    return table


def run_details(store: ArtifactStore, snapshot: RunSnapshot) -> RenderableType:
    """Everything about one run: phase, message, progress, metrics, SLA, artifacts."""
    run, status = snapshot.paths, snapshot.status
    header = Text.assemble(
        (f"{run.namespace}/{run.name}", "bold"),
        f" generation {run.generation}: ",
        _phase(status.phase),
    )
    parts: list[RenderableType] = [header]
    if status.message:
        parts.append(Text(status.message))
    progress = status.progress
    if status.phase == "Training" and progress is not None and progress.step is not None:
        done = f"step {progress.step}/{progress.total_steps}, loss {_number(progress.loss)}"
        parts.append(Text(done))
    if status.metrics is not None:
        parts.append(metrics_table(status.metrics))
    if status.evaluation is not None:
        parts.append(evaluation_table(status.evaluation))
    if status.benchmark is not None:
        parts.append(sla_table(status.benchmark, snapshot.config.spec.benchmark))
    places = Table.grid(padding=(0, 2))
    places.add_column(style="bold")
    places.add_column()
    artifacts = status.artifacts
    places.add_row("run", store.uri(run.prefix))
    if artifacts is not None and artifacts.adapter:
        places.add_row("adapter", artifacts.adapter)
    if artifacts is not None and artifacts.report:
        places.add_row("report", artifacts.report)
    if artifacts is not None and artifacts.merged:
        places.add_row("merged", artifacts.merged)
    if artifacts is not None and artifacts.last_checkpoint and status.phase == "Training":
        places.add_row("checkpoint", artifacts.last_checkpoint)
    if status.promoted_model:
        places.add_row("promoted", status.promoted_model)
    if (status.benchmark_round or 1) > 1:
        kept = store.uri(run.round_report(1)).rsplit("/", 1)[0]
        places.add_row("benchmark round", f"{status.benchmark_round} (every round: {kept}/)")
    if status.cost is not None:
        places.add_row("GPU-hours", cost_line(status.cost))
    parts.append(places)
    return Group(*parts)


def cost_line(cost: Cost) -> str:
    """`1.5 (training 1.2, benchmark 0.3), 4.50 EUR`; the projection while training."""
    line = (
        f"{cost.gpu_hours:g} (training {cost.training_gpu_hours:g}, benchmark "
        f"{cost.benchmark_gpu_hours:g}), {cost.estimated_cost:.2f} {cost.currency}"
    )
    if cost.projected_gpu_hours is not None:
        projected = cost.projected_cost or 0.0
        line += f"; projected {cost.projected_gpu_hours:g} ({projected:.2f} {cost.currency})"
    return line


def list_runs(store: str | None, endpoint: str | None) -> int:
    """`finetune runs`: every run in the store, newest first."""
    console = Console()
    artifacts = open_store(store, endpoint)
    snapshots = all_runs(artifacts)
    if not snapshots:
        console.print(f"No runs in {artifacts.uri()}")
        return 0
    table = Table(title=f"Runs in {artifacts.uri()}", title_justify="left")
    for header in ("Name", "Namespace", "Gen", "Phase", "Model", "Eval loss", "SLA"):
        table.add_column(header, justify="right" if header in {"Gen", "Eval loss"} else "left")
    table.add_column("Started (UTC)", no_wrap=True)
    for snapshot in snapshots:
        status = snapshot.status
        table.add_row(
            snapshot.paths.name,
            snapshot.paths.namespace,
            str(snapshot.paths.generation),
            _phase(status.phase),
            model_key(snapshot.config.spec),
            _number(status.metrics.eval_loss if status.metrics else None),
            sla_verdict(status),
            (status.started_at or "-").replace("T", " ").removesuffix("Z")[:16],
        )
    console.print(table)
    return 0


def named_run(
    console: Console, name: str, store: str | None, endpoint: str | None
) -> tuple[ArtifactStore, RunSnapshot] | None:
    """The store and the newest generation of the job `[namespace/]name`; None, after
    saying why, when there is no such job."""
    artifacts = open_store(store, endpoint)
    try:
        return artifacts, newest_of(artifacts, name)
    except UnknownRun as unknown:
        console.print(f"[red]{unknown}[/]", highlight=False)
        return None


def show_run(name: str, store: str | None, endpoint: str | None) -> int:
    """`finetune show [NAMESPACE/]NAME`: the newest generation of one job."""
    console = Console()
    found = named_run(console, name, store, endpoint)
    if found is None:
        return EXIT_FAILED
    console.print(run_details(*found))
    return EXIT_OK
