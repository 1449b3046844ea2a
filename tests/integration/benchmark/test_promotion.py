"""Promotion on both stores: the local directory and S3 (moto's server, real minio client)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from finetune_core.api import Metrics
from finetune_core.gate import judge
from finetune_core.layout import RunPaths, current_alias
from finetune_core.promotion import PromotionError, promote, read_champion
from finetune_core.store import ArtifactStore, LocalStore
from tests.unit.benchmark.builders import make_report, make_spec, profile

SPEC = make_spec()
MODEL_DIR = "models/smollm2-135m"
FIRST, SECOND = RunPaths("ml", "agent", 1), RunPaths("ml", "agent", 2)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest) -> ArtifactStore:
    return request.getfixturevalue(f"{request.param}_store")


def finished_run(store: ArtifactStore, run: RunPaths, eval_loss: float) -> None:
    """What training and a passing benchmark leave in a run directory."""
    weights = b"weights of " + run.prefix.encode()
    store.put_bytes(f"{run.adapter}/adapter_model.safetensors", weights)
    store.put_json(f"{run.adapter}/adapter_config.json", {"r": 16})
    store.put_json(run.metrics, Metrics(eval_loss=eval_loss, base_eval_loss=1.5).to_wire())
    report = make_report(profile("question", 3.1, 3.4, 10), profile("answer", 1.0, 1.2, 6))
    store.put_json(run.benchmark_report, report.to_wire())
    store.put_bytes(run.report_html, b"<!doctype html><title>report</title>")


def test_promotion_copies_the_run_and_moves_the_alias(store: ArtifactStore) -> None:
    finished_run(store, FIRST, eval_loss=1.2)
    now = datetime(2026, 2, 3, 4, 5, 6, tzinfo=UTC)
    uri = promote(store, FIRST, SPEC, now=now)

    target = f"{MODEL_DIR}/ml-agent-g1"
    assert uri == store.uri(target)
    assert sorted(store.list(target)) == [
        f"{target}/README.md",
        f"{target}/adapter/adapter_config.json",
        f"{target}/adapter/adapter_model.safetensors",
        f"{target}/report/benchmark.json",
        f"{target}/report/index.html",
    ]
    assert store.get_bytes(f"{target}/adapter/adapter_model.safetensors") == (
        b"weights of runs/ml/agent/g1"
    )
    card = store.get_bytes(f"{target}/README.md").decode()
    assert "| question | n/a | 3.1 | 3.4 | 10 |" in card
    assert store.get_json(current_alias("smollm2-135m")) == {
        "version": "ml-agent-g1",
        "uri": uri,
        "promotedAt": "2026-02-03T04:05:06Z",
        "evalLoss": 1.2,
        "previous": [],
    }


def test_a_second_promotion_keeps_the_first_and_repeats_add_nothing(store: ArtifactStore) -> None:
    finished_run(store, FIRST, eval_loss=1.2)
    finished_run(store, SECOND, eval_loss=1.1)
    first_uri = promote(store, FIRST, SPEC)
    second_uri = promote(store, SECOND, SPEC)
    promote(store, SECOND, SPEC)  # a retried promotion

    champion = read_champion(store, "smollm2-135m")
    assert champion is not None
    assert (champion.version, champion.uri, champion.eval_loss) == ("ml-agent-g2", second_uri, 1.1)
    assert [entry["version"] for entry in champion.previous] == ["ml-agent-g1"]
    assert champion.previous[0]["uri"] == first_uri
    assert store.exists(f"{MODEL_DIR}/ml-agent-g1/adapter/adapter_model.safetensors")


def test_with_require_improvement_a_worse_challenger_is_rejected(store: ArtifactStore) -> None:
    finished_run(store, FIRST, eval_loss=1.2)
    promote(store, FIRST, SPEC)
    spec = make_spec(require_improvement=True)
    challenger = Metrics(eval_loss=1.35, base_eval_loss=1.5)
    report = make_report(profile("question", 3.1, 3.4, 10), profile("answer", 1.0, 1.2, 6))

    verdict = judge(report, spec, challenger, read_champion(store, "smollm2-135m"))
    assert not verdict.passed
    assert verdict.reason == "NoImprovement"
    assert "1.35" in verdict.message and "1.2" in verdict.message
    assert "ml-agent-g1" in verdict.message


def test_nothing_is_promoted_without_an_adapter(store: ArtifactStore) -> None:
    store.put_json(FIRST.metrics, Metrics(eval_loss=1.0).to_wire())
    with pytest.raises(PromotionError, match="no adapter to promote"):
        promote(store, FIRST, SPEC)
    assert read_champion(store, "smollm2-135m") is None


def test_an_unreadable_alias_is_an_error_naming_it(store: ArtifactStore) -> None:
    store.put_json(current_alias("smollm2-135m"), {"version": "x"})
    with pytest.raises(PromotionError, match=r"current\.json is not a valid alias"):
        read_champion(store, "smollm2-135m")


class RecordingStore(LocalStore):
    """The local store, remembering the order in which objects were written."""

    def __init__(self, root: Path):
        super().__init__(root)
        self.writes: list[str] = []

    def put_bytes(self, key: str, data: bytes, content_type: str = "") -> None:
        super().put_bytes(key, data, content_type)
        self.writes.append(key)


def test_the_alias_is_written_after_the_whole_copy(tmp_path: Path) -> None:
    store = RecordingStore(tmp_path / "store")
    finished_run(store, FIRST, eval_loss=1.2)
    store.writes.clear()
    promote(store, FIRST, SPEC)
    assert store.writes[-1] == current_alias("smollm2-135m")
    assert {key for key in store.writes[:-1]} == set(store.list(f"{MODEL_DIR}/ml-agent-g1"))
