"""The benchmark's human-readable report: report/index.html, one self-contained page
(latency histograms and the trainer's loss curve inlined as PNG data: URIs, styles inline,
no scripts, fonts or links to fetch), plus the histograms as files and report/samples.json
with every measured sample.
"""

from __future__ import annotations

import base64
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from finetune_core.api import (
    ApiModel,
    BenchmarkReport,
    EvaluationReport,
    Metrics,
    RunConfig,
    SlaProfile,
)
from finetune_core.gate import BASIS_WORDS, Verdict, interval_of, percentile_of
from finetune_core.layout import RunPaths
from finetune_core.sampling import percentile
from finetune_core.store import ArtifactStore
from finetune_trainer.latency import REPORTED_PERCENTILES, SampleTiming

TEMPLATE = "report.html.jinja"
LIMIT_COLOR = "#c0392b"
PERCENTILE_COLOR = "#2c3e50"
BAR_COLOR = "#5b8def"
BEYOND_COLOR = "#e74c3c"
INTERVAL_COLOR = "#95a5a6"
HISTOGRAM_BINS = 60


class SampleRecord(ApiModel):
    """One measured sample in report/samples.json (seconds)."""

    index: int
    prompt: str
    prompt_tokens: int
    tokens: int
    ttft: float
    itl: float
    latency: float
    tokens_per_second: float


class ProfileRecord(ApiModel):
    name: str
    warmup: int
    samples: list[SampleRecord]


class SamplesFile(ApiModel):
    """report/samples.json: the measured samples behind the statistics (no warm-ups)."""

    profiles: list[ProfileRecord]


@dataclass(frozen=True)
class ProfileSamples:
    """One profile's measured samples and the prompts they used (index-aligned)."""

    profile: SlaProfile
    warmup: int  # the warm-up generations that ran before the measured ones
    timings: list[SampleTiming]
    sources: list[str]
    prompt_tokens: list[int]

    def record(self) -> ProfileRecord:
        return ProfileRecord(
            name=self.profile.name,
            warmup=self.warmup,
            samples=[
                SampleRecord(
                    index=index,
                    prompt=source,
                    prompt_tokens=tokens,
                    tokens=timing.tokens,
                    ttft=timing.ttft,
                    itl=timing.itl,
                    latency=timing.latency,
                    tokens_per_second=timing.tokens_per_second,
                )
                for index, (timing, source, tokens) in enumerate(
                    zip(self.timings, self.sources, self.prompt_tokens, strict=True), start=1
                )
            ],
        )


@dataclass(frozen=True)
class ReportInputs:
    """Everything the report shows."""

    run: RunPaths
    config: RunConfig
    report: BenchmarkReport
    verdict: Verdict
    samples: list[ProfileSamples]
    metrics: Metrics | None
    loss_chart: bytes | None  # the trainer's report/loss.png
    evaluation: EvaluationReport | None = None  # report/evaluation.json


# ---------------------------------------------------------------- charts
# Figures are built with matplotlib's object API (no pyplot): no global state, no display.


def png(figure: Figure) -> bytes:
    """The figure as PNG bytes, without the metadata that names matplotlib's web site."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


def latency_histogram(
    samples: ProfileSamples, gated: int, interval: tuple[float, float] | None = None
) -> Figure:
    """End-to-end latency of the measured samples, with the limit, the gated percentile and
    its confidence interval; samples beyond the limit are kept, in their own colour."""
    latencies = [timing.latency for timing in samples.timings]
    limit = samples.profile.max_latency_seconds
    value = percentile(latencies, gated)
    right = max(limit, max(latencies), interval[1] if interval else 0.0) * 1.08
    figure = Figure(figsize=(6.4, 3.2), layout="constrained")
    axes = figure.subplots()
    # Bins span the whole axis, so bars stay visible when the limit is far from the samples.
    bins = [right * i / HISTOGRAM_BINS for i in range(HISTOGRAM_BINS + 1)]
    within = [latency for latency in latencies if latency <= limit]
    beyond = [latency for latency in latencies if latency > limit]
    axes.hist(
        [within, beyond],
        bins=bins,
        color=[BAR_COLOR, BEYOND_COLOR],
        edgecolor="white",
        linewidth=0.5,
        stacked=True,
        label=["within the limit", f"beyond the limit ({len(beyond)})"],
    )
    if interval is not None:
        axes.axvspan(
            interval[0],
            interval[1],
            color=INTERVAL_COLOR,
            alpha=0.3,
            label=f"p{gated} interval [{interval[0]:.3g}, {interval[1]:.3g}] s",
        )
    axes.axvline(limit, color=LIMIT_COLOR, linestyle="--", linewidth=2, label=f"limit {limit:g} s")
    axes.axvline(
        value, color=PERCENTILE_COLOR, linestyle=":", linewidth=2, label=f"p{gated} {value:.3g} s"
    )
    axes.set_xlim(0, right)
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("end-to-end latency (s)")
    axes.set_ylabel("samples")
    axes.set_title(
        f"{samples.profile.name}: {len(latencies)} samples after {samples.warmup} warm-ups, "
        f"{samples.profile.max_new_tokens} new tokens each"
    )
    axes.legend(loc="best", frameon=False, fontsize="small")
    return figure


def data_uri(image: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(image).decode("ascii")


def slug(name: str) -> str:
    """A file-name-safe form of a profile name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "profile"


# ---------------------------------------------------------------- the page


def flatten(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Rows of dotted keys and scalar values, for the configuration table."""
    if isinstance(value, dict):
        rows = []
        for key, item in value.items():
            rows += flatten(item, f"{prefix}.{key}" if prefix else key)
        return rows
    if isinstance(value, list) and any(isinstance(item, dict | list) for item in value):
        rows = []
        for index, item in enumerate(value):
            rows += flatten(item, f"{prefix}[{index}]")
        return rows
    if isinstance(value, list):
        return [(prefix, ", ".join(str(item) for item in value))]
    return [(prefix, str(value))]


def render_html(inputs: ReportInputs, histograms: dict[str, bytes]) -> str:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("finetune_trainer", "."),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    report = inputs.report
    gated = report.percentile or inputs.config.spec.benchmark.percentile
    beyond = {
        s.profile.name: sum(t.latency > s.profile.max_latency_seconds for t in s.timings)
        for s in inputs.samples
    }
    profiles = [
        {
            "result": result,
            "gated": percentile_of(result, gated),
            "histogram": data_uri(histograms[result.name]) if result.name in histograms else None,
            "beyond": beyond.get(result.name, 0),
        }
        for result in report.profiles
    ]
    template = environment.get_template(TEMPLATE)
    return template.render(
        run=inputs.run,
        spec=inputs.config.spec,
        report=report,
        verdict=inputs.verdict,
        percentile=gated,
        percentiles=REPORTED_PERCENTILES,
        percentile_of=percentile_of,
        profiles=profiles,
        bases=BASIS_WORDS,
        metrics=inputs.metrics or Metrics(),
        loss_chart=data_uri(inputs.loss_chart) if inputs.loss_chart else None,
        configuration=flatten(inputs.config.spec.to_wire()),
        evaluation=inputs.evaluation,
    )


def write_report(store: ArtifactStore, inputs: ReportInputs, directory: Path) -> None:
    """Render the charts and the page into `directory`, then upload them to the run's report/
    (index.html after the images it describes)."""
    directory.mkdir(parents=True, exist_ok=True)
    gated = inputs.report.percentile or inputs.config.spec.benchmark.percentile
    intervals = {result.name: interval_of(result) for result in inputs.report.profiles}
    histograms = {
        s.profile.name: png(latency_histogram(s, gated, intervals.get(s.profile.name)))
        for s in inputs.samples
    }
    for samples in inputs.samples:
        (directory / f"latency-{slug(samples.profile.name)}.png").write_bytes(
            histograms[samples.profile.name]
        )
    records = SamplesFile(profiles=[samples.record() for samples in inputs.samples])
    (directory / "samples.json").write_text(records.model_dump_json(by_alias=True, indent=2))
    (directory / "index.html").write_text(render_html(inputs, histograms), encoding="utf-8")
    for name in sorted(p.name for p in directory.iterdir()):
        if name != "index.html":
            store.put_file(f"{inputs.run.report}/{name}", directory / name)
    store.put_file(inputs.run.report_html, directory / "index.html")
