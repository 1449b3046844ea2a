"""The HTML report opened in headless Chromium (Debian's `chromium` package): its tables and
images render, with no console error, and a full-page screenshot is kept as a test artifact
(test-artifacts/report.png, or under FINETUNE_TEST_ARTIFACTS).

Without Chromium the test skips, saying how to install it; under CI (CI=true) it fails
instead, so that a CI machine without a browser cannot pass by skipping (.ci/run installs
the package where it can).
"""

from __future__ import annotations

import dataclasses
import io
import os
from pathlib import Path

import pytest

from finetune_core.store import LocalStore
from finetune_trainer.report import BAR_COLOR, write_report
from tests.support.browser import artifacts_dir, chromium, render
from tests.unit.benchmark.pages import PNG_SIGNATURE
from tests.unit.benchmark.test_report import RUN, inputs
from tests.unit.benchmark.test_review_report import ANSWERS, evaluation

MISSING = (
    "chromium is not installed: the report's browser test needs Debian's chromium package "
    "(apt-get install -y chromium)"
)


@pytest.fixture(scope="module")
def browser() -> str:
    found = chromium()
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{MISSING}; under CI this test must run, not skip")
        pytest.skip(MISSING)
    return found


def bar_pixels(screenshot: bytes) -> int:
    """Pixels of the histograms' bar colour: the charts were painted, not just laid out."""
    from PIL import Image

    image = Image.open(io.BytesIO(screenshot)).convert("RGB")
    wanted = tuple(int(BAR_COLOR[i : i + 2], 16) for i in (1, 3, 5))
    return sum(count for count, colour in image.getcolors(maxcolors=1 << 24) if colour == wanted)


def test_the_report_renders_its_tables_and_images_without_console_errors(
    browser: str, tmp_path: Path
) -> None:
    store = LocalStore(tmp_path / "store")
    write_report(
        store, dataclasses.replace(inputs(), evaluation=evaluation(ANSWERS)), tmp_path / "work"
    )
    page = render(store.root / RUN.report_html, browser)

    screenshot = artifacts_dir() / "report.png"
    screenshot.write_bytes(page.screenshot)
    assert page.screenshot.startswith(PNG_SIGNATURE)

    assert page.console_errors == []
    assert page.title.startswith("Benchmark ml/agent g2")
    assert len(page.images) == 2  # the latency histogram and the loss curve
    for image in page.images:
        assert image["complete"] and image["width"] > 0 and image["height"] > 0, image
        assert image["shown"] > 0, image
    assert bar_pixels(page.screenshot) > 500

    tables = {table["cls"]: table for table in page.tables}
    review = tables["review"]
    assert review["rows"] == 1 + len(ANSWERS) and review["height"] > 0
    assert "<script>alert(1)</script>" in review["text"]  # shown as text, never run
    assert tables["scores"]["rows"] == 3 and "12.50" in tables["scores"]["text"]
    assert tables["evaluation"]["rows"] == 2 and "0.8123" in tables["evaluation"]["text"]
    assert len(page.tables) >= 6  # latency, quality, held-out, scores, review, run, config
    assert all(table["height"] > 0 for table in page.tables)


def test_a_broken_page_is_caught(browser: str, tmp_path: Path) -> None:
    """The checks above can fail: a missing image is not rendered and reports an error."""
    broken = tmp_path / "broken.html"
    broken.write_text(
        '<!doctype html><meta charset="utf-8"><title>broken</title>'
        '<table><tr><td>one</td></tr></table><img src="missing.png" alt="gone">'
    )
    page = render(broken, browser)
    (image,) = page.images
    assert image["width"] == 0
    assert any("missing.png" in error for error in page.console_errors), page.console_errors
