"""The report's held-out evaluation and its review table: prompt, reference, base answer and
adapter answer side by side, escaped, with the scores."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from finetune_core.api import EvaluationReport, ReviewAnswer
from finetune_core.store import LocalStore
from finetune_trainer.report import ReportInputs, write_report
from tests.unit.benchmark.pages import assert_self_contained
from tests.unit.benchmark.test_report import RUN, inputs

ANSWERS = [
    ReviewAnswer(
        prompt="How do I list files?",
        reference="Use `ls -l`.",
        base="<script>alert(1)</script>",
        adapter="Run ls -l in the directory.",
    ),
    ReviewAnswer(prompt="What is pip?", reference="The installer.", base="A tool.", adapter="pip."),
]


def evaluation(answers: list[ReviewAnswer]) -> EvaluationReport:
    return EvaluationReport(
        dataset="s3://datasets/held-out.jsonl",
        eval_loss=1.2345,
        perplexity=3.437,
        bits_per_byte=0.8123,
        base_bleu=3.21,
        adapter_bleu=12.5,
        base_rouge_l=0.111,
        adapter_rouge_l=0.333,
        answers=answers,
    )


def page(tmp_path: Path, with_evaluation: ReportInputs) -> str:
    store = LocalStore(tmp_path / "store")
    write_report(store, with_evaluation, tmp_path / "work")
    return store.get_bytes(RUN.report_html).decode()


def test_the_review_table_shows_every_answer_side_by_side_escaped(tmp_path: Path) -> None:
    shown = page(tmp_path, dataclasses.replace(inputs(), evaluation=evaluation(ANSWERS)))
    assert_self_contained(shown)  # an answer's markup is text, never a script
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in shown
    table = shown.split('<table class="review">', 1)[1].split("</table>", 1)[0]
    assert table.count("<tr>") == 1 + len(ANSWERS)
    for column in ("Prompt", "Reference", "Base model", "Adapter"):
        assert f">{column}</th>" in table
    row = table.split("<tr>")[2]
    assert row.index("How do I list files?") < row.index("Use `ls -l`.")
    assert row.index("Use `ls -l`.") < row.index("&lt;script&gt;") < row.index("Run ls -l")


def test_the_scores_and_the_held_out_figures_are_shown(tmp_path: Path) -> None:
    shown = page(tmp_path, dataclasses.replace(inputs(), evaluation=evaluation(ANSWERS)))
    assert "s3://datasets/held-out.jsonl" in shown
    for figure in ("1.2345", "3.437", "0.8123", "3.21", "12.50", "0.111", "0.333"):
        assert figure in shown


def test_without_answers_the_page_says_so(tmp_path: Path) -> None:
    shown = page(tmp_path, dataclasses.replace(inputs(), evaluation=evaluation([])))
    assert '<table class="review">' not in shown
    assert "No review answers" in shown


def test_a_report_without_an_evaluation_has_no_review_section(tmp_path: Path) -> None:
    shown = page(tmp_path, inputs())
    assert "Answers for review" not in shown
