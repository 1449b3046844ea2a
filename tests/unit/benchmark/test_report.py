"""The HTML report from synthetic measurements: self-contained, and it says what matters."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from finetune_core.api import Metrics, RunConfig
from finetune_core.gate import judge
from finetune_core.layout import RunPaths
from finetune_core.store import LocalStore
from finetune_trainer.benchmark import profile_result
from finetune_trainer.latency import SampleTiming
from finetune_trainer.report import (
    ProfileSamples,
    ReportInputs,
    latency_histogram,
    png,
    write_report,
)
from tests.unit.benchmark.builders import make_report, make_spec
from tests.unit.benchmark.pages import PNG_SIGNATURE, assert_self_contained

RUN = RunPaths("ml", "agent", 2)


def timings(latencies: list[float], tokens: int = 4) -> list[SampleTiming]:
    return [
        SampleTiming(tuple(latency * (k + 1) / (tokens + 1) for k in range(tokens)), latency)
        for latency in latencies
    ]


def inputs(name: str = "answer<&>", limit: float = 6.0, with_loss: bool = True) -> ReportInputs:
    sla = [{"name": name, "maxNewTokens": 4, "maxLatencySeconds": limit}]
    spec = make_spec(sla=sla)
    measured = timings([5.0, 6.5, 7.2, 7.5, 8.0])
    samples = ProfileSamples(spec.benchmark.sla[0], 2, measured, ["row"] * 5, [9] * 5)
    result = profile_result(samples, spec.benchmark)
    report = make_report(result)
    report.device = "cpu: test, 2 threads"
    report.versions = {"torch": "2.13.0"}
    report.eval_loss, report.base_eval_loss = 1.1, 1.5
    metrics = Metrics(eval_loss=1.1, base_eval_loss=1.5, dataset_sha256="f" * 64, backend="unsloth")
    verdict = judge(report, spec, metrics, None)
    return ReportInputs(
        run=RUN,
        config=RunConfig(namespace="ml", name="agent", generation=2, spec=spec),
        report=report,
        verdict=verdict,
        samples=[samples],
        metrics=metrics,
        loss_chart=png(latency_histogram(samples, 95)) if with_loss else None,
    )


@pytest.fixture
def written(tmp_path: Path) -> tuple[LocalStore, str]:
    store = LocalStore(tmp_path / "store")
    write_report(store, inputs(), tmp_path / "work")
    return store, store.get_bytes(RUN.report_html).decode()


def test_the_page_needs_no_network(written: tuple[LocalStore, str]) -> None:
    _, page = written
    references = assert_self_contained(page)
    assert len(references.images) == 2  # one histogram, the trainer's loss curve
    for src in references.images:
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_SIGNATURE)


def test_the_page_shows_the_verdict_the_limit_and_the_numbers(
    written: tuple[LocalStore, str],
) -> None:
    _, page = written
    assert "REJECTED" in page
    assert "SlaMissed" in page
    problem = "profile answer&lt;&amp;&gt;: p95 7.9 s [7.6, 40.7], lower bound &gt; limit 6 s"
    assert problem + " (interval)" in page  # escaped, not raw
    assert "[7.604, 40.735]" in page  # the interval column
    assert "fail</span> (interval)" in page  # the verdict's basis
    assert "4 sample(s) beyond the limit" in page  # outliers are kept and counted
    assert "answer<&>" not in page
    assert "limit 6 s" in page
    assert '<th class="gated">p95</th>' in page
    assert "f" * 64 in page  # dataset hash
    assert "2.13.0" in page  # library versions
    assert "1.1000" in page and "1.5000" in page  # eval losses, adapter and base
    trained = '<td class="name">Trained with</td><td class="name">unsloth</td>'
    assert trained in page  # metrics.json's backend, beside the one that measured


def test_the_charts_and_samples_are_stored_beside_the_page(
    written: tuple[LocalStore, str],
) -> None:
    store, _ = written
    keys = set(store.list(RUN.report))
    assert f"{RUN.report}/latency-answer.png" in keys
    assert store.get_bytes(f"{RUN.report}/latency-answer.png").startswith(PNG_SIGNATURE)
    samples = json.loads(store.get_bytes(f"{RUN.report}/samples.json"))
    (profile,) = samples["profiles"]
    assert profile["warmup"] == 2
    assert [s["latency"] for s in profile["samples"]] == [5.0, 6.5, 7.2, 7.5, 8.0]
    assert profile["samples"][0]["promptTokens"] == 9


def test_the_histogram_draws_the_limit_and_the_gated_percentile() -> None:
    samples = inputs(name="answer", limit=6.0).samples[0]
    figure = latency_histogram(samples, 95)
    (axes,) = figure.axes
    lines = {line.get_label(): line.get_xdata()[0] for line in axes.get_lines()}
    assert lines["limit 6 s"] == 6.0
    assert lines["p95 7.9 s"] == pytest.approx(7.9)
    assert sum(patch.get_height() for patch in axes.patches) == 5  # every sample in a bar
    assert axes.get_xlim()[1] >= 8.0


def test_a_limit_far_above_the_samples_still_shows_them() -> None:
    samples = inputs(name="answer", limit=1000.0).samples[0]
    (axes,) = latency_histogram(samples, 95).axes
    assert axes.get_xlim()[1] >= 1000
    widths = [patch.get_width() for patch in axes.patches if patch.get_height() > 0]
    assert min(widths) >= 1000 / 100  # bars wide enough to see at this scale


def test_without_the_trainer_loss_chart_the_page_says_so(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    write_report(store, inputs(with_loss=False), tmp_path / "work")
    page = store.get_bytes(RUN.report_html).decode()
    assert page.count("<img ") == 1
    assert "The run recorded no loss curve." in page


def test_the_histogram_marks_the_interval_and_the_samples_beyond_the_limit() -> None:
    samples = inputs(name="answer", limit=6.0).samples[0]  # 5.0 within; 6.5, 7.2, 7.5, 8.0 beyond
    (axes,) = latency_histogram(samples, 95, (7.6, 9.5)).axes
    labels = axes.get_legend_handles_labels()[1]
    assert "beyond the limit (4)" in labels
    assert "within the limit" in labels
    assert "p95 interval [7.6, 9.5] s" in labels
    assert axes.get_xlim()[1] >= 9.5  # the whole interval is on the chart
