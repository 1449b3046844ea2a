"""current.json after a promotion, and the model card: pure functions."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from finetune_core.api import Metrics
from finetune_core.clock import timestamp
from finetune_core.layout import RunPaths
from finetune_core.promotion import model_card, next_alias
from tests.unit.benchmark.builders import make_report, make_spec, profile


def promote_all(*versions: str, keep: int = 10) -> list[str]:
    """Promote versions in order; the alias's version, then its previous versions."""
    alias = None
    for index, version in enumerate(versions):
        alias = next_alias(alias, version, f"s3://b/models/m/{version}", f"t{index}", 1.0, keep)
    assert alias is not None
    return [alias.version] + [str(entry["version"]) for entry in alias.previous]


def test_the_first_promotion_has_no_history() -> None:
    alias = next_alias(None, "ml-a-g1", "s3://b/models/m/ml-a-g1", "2026-01-01T00:00:00Z", 1.2)
    assert alias.to_wire() == {
        "version": "ml-a-g1",
        "uri": "s3://b/models/m/ml-a-g1",
        "promotedAt": "2026-01-01T00:00:00Z",
        "evalLoss": 1.2,
        "action": "promote",
        "previous": [],
    }


def test_a_second_promotion_keeps_the_first_in_previous() -> None:
    first = next_alias(None, "ml-a-g1", "s3://b/m/ml-a-g1", "2026-01-01T00:00:00Z", 1.2)
    second = next_alias(first, "ml-a-g2", "s3://b/m/ml-a-g2", "2026-01-02T00:00:00Z", 1.1)
    assert second.version == "ml-a-g2"
    assert second.previous == [
        {
            "version": "ml-a-g1",
            "uri": "s3://b/m/ml-a-g1",
            "promotedAt": "2026-01-01T00:00:00Z",
            "evalLoss": 1.2,
            "action": "promote",
        }
    ]


def test_promoting_the_current_version_again_changes_nothing() -> None:
    first = next_alias(None, "g1", "u1", "t1", 1.0)
    second = next_alias(first, "g2", "u2", "t2", 0.9)
    assert next_alias(second, "g2", "u2", "t3", 0.9) is second
    assert promote_all("g1", "g2", "g2", "g2") == ["g2", "g1"]


def test_history_is_newest_first_without_duplicates_and_bounded() -> None:
    assert promote_all("g1", "g2", "g3") == ["g3", "g2", "g1"]
    assert promote_all("g1", "g2", "g1") == ["g1", "g2"]  # a rollback moves g1, no copy
    assert promote_all(*(f"g{i}" for i in range(1, 8)), keep=3) == ["g7", "g6", "g5", "g4"]


def test_timestamps_are_utc_rfc3339() -> None:
    moment = datetime(2026, 3, 1, 14, 30, 5, 123456, tzinfo=timezone(timedelta(hours=2)))
    assert timestamp(moment) == "2026-03-01T12:30:05Z"


def test_model_card_names_model_data_settings_metrics_and_sla() -> None:
    run = RunPaths("ml", "agent", 3)
    report = make_report(profile("question", 3.1, 3.4, 10), profile("answer", 5.0, 7.41, 6))
    report.device = "cuda: AMD Instinct MI300X"
    metrics = Metrics(
        eval_loss=1.1, perplexity=3.0, base_eval_loss=1.5, dataset_sha256="ab" * 32, train_rows=90
    )
    card = model_card(run, make_spec(), "s3://b/models/smollm2-135m/ml-agent-g3", metrics, report)
    assert card.startswith("# agent-g3\n")
    assert "`HuggingFaceTB/SmolLM2-135M-Instruct` (preset `smollm2-135m`)" in card
    assert "Dataset sha256: `" + "ab" * 32 + "`" in card
    assert "| LoRA r / alpha / dropout | 16 / 32 / 0.05 |" in card
    assert "| Eval loss | 1.1 | 1.5 |" in card
    assert "| Perplexity | 3 | 4.482 |" in card  # exp(1.5) for the base model
    assert "| question | n/a | 3.1 | 3.4 | 10 | 0.1 | 40 | pass |" in card
    assert "| answer | n/a | 5 | 7.41 | 6 | 0.1 | 40 | fail |" in card
    assert "Measured on cuda: AMD Instinct MI300X" in card


def test_model_card_without_metrics_or_report_says_so() -> None:
    card = model_card(RunPaths("ml", "agent", 1), make_spec(), "/store/m", None, None)
    assert "Dataset sha256: `n/a`" in card
    assert "No benchmark report." in card
