"""Promotion on both stores: the local directory and S3 (moto's server, real minio client)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest

from finetune_core.api import Metrics
from finetune_core.gate import judge
from finetune_core.layout import AliasPaths, CurrentAlias, RunPaths
from finetune_core.promotion import (
    ChampionChanged,
    PromotionError,
    promote,
    read_champion,
    rollback,
)
from finetune_core.store import ArtifactStore, LocalStore
from tests.support.cli import finetune
from tests.unit.benchmark.builders import make_report, make_spec, profile

SPEC = make_spec()
ALIAS = AliasPaths("ml", "smollm2-135m")
MODEL_DIR = ALIAS.prefix
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

    target = f"{MODEL_DIR}/agent-g1"
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
    assert store.get_json(ALIAS.current) == {
        "version": "agent-g1",
        "uri": uri,
        "promotedAt": "2026-02-03T04:05:06Z",
        "evalLoss": 1.2,
        "action": "promote",
        "previous": [],
    }


def test_a_second_promotion_keeps_the_first_and_repeats_add_nothing(store: ArtifactStore) -> None:
    finished_run(store, FIRST, eval_loss=1.2)
    finished_run(store, SECOND, eval_loss=1.1)
    first_uri = promote(store, FIRST, SPEC)
    second_uri = promote(store, SECOND, SPEC)
    promote(store, SECOND, SPEC)  # a retried promotion

    champion = read_champion(store, ALIAS)
    assert champion is not None
    assert (champion.version, champion.uri, champion.eval_loss) == ("agent-g2", second_uri, 1.1)
    assert [entry["version"] for entry in champion.previous] == ["agent-g1"]
    assert champion.previous[0]["uri"] == first_uri
    assert store.exists(f"{MODEL_DIR}/agent-g1/adapter/adapter_model.safetensors")


def test_with_require_improvement_a_worse_challenger_is_rejected(store: ArtifactStore) -> None:
    finished_run(store, FIRST, eval_loss=1.2)
    promote(store, FIRST, SPEC)
    spec = make_spec(require_improvement=True)
    challenger = Metrics(eval_loss=1.35, base_eval_loss=1.5)
    report = make_report(profile("question", 3.1, 3.4, 10), profile("answer", 1.0, 1.2, 6))

    verdict = judge(report, spec, challenger, read_champion(store, ALIAS))
    assert not verdict.passed
    assert verdict.reason == "NoImprovement"
    assert "1.35" in verdict.message and "1.2" in verdict.message
    assert "agent-g1" in verdict.message


def test_nothing_is_promoted_without_an_adapter(store: ArtifactStore) -> None:
    store.put_json(FIRST.metrics, Metrics(eval_loss=1.0).to_wire())
    with pytest.raises(PromotionError, match="no adapter to promote"):
        promote(store, FIRST, SPEC)
    assert read_champion(store, ALIAS) is None


def test_an_unreadable_alias_is_an_error_naming_it(store: ArtifactStore) -> None:
    store.put_json(ALIAS.current, {"version": "x"})
    with pytest.raises(PromotionError, match=r"current\.json is not a valid alias"):
        read_champion(store, ALIAS)


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
    assert store.writes[-1] == ALIAS.current
    assert {key for key in store.writes[:-1]} == set(store.list(f"{MODEL_DIR}/agent-g1"))


def test_aliases_are_per_namespace_and_named_by_the_spec(store: ArtifactStore) -> None:
    """Another team's run of the same base model never touches this team's alias."""
    other = RunPaths("team-b", "agent", 1)
    finished_run(store, FIRST, eval_loss=1.2)
    finished_run(store, other, eval_loss=0.9)
    promote(store, FIRST, SPEC)
    named = make_spec(alias="cerberus")
    uri = promote(store, other, named)
    assert uri == store.uri("models/team-b/cerberus/agent-g1")
    assert read_champion(store, ALIAS).version == "agent-g1"  # type: ignore[union-attr]
    assert read_champion(store, AliasPaths("team-b", "smollm2-135m")) is None


def test_an_alias_in_the_old_layout_is_read_and_carried_over(store: ArtifactStore) -> None:
    """Before aliases were per namespace, current.json lived at models/<model>/: it is read
    as the champion until the first promotion writes the new place, with its history."""
    old = CurrentAlias(version="ml-agent-g1", uri="s3://old/x", promoted_at="t", eval_loss=1.0)
    store.put_json(ALIAS.legacy_current, old.to_wire())
    assert read_champion(store, ALIAS) == old
    finished_run(store, SECOND, eval_loss=0.8)
    promote(store, SECOND, SPEC)
    champion = read_champion(store, ALIAS)
    assert champion is not None and champion.version == "agent-g2"
    assert [entry["version"] for entry in champion.previous] == ["ml-agent-g1"]


def test_a_retried_promotion_never_displaces_a_newer_champion(store: ArtifactStore) -> None:
    finished_run(store, FIRST, eval_loss=1.2)
    finished_run(store, SECOND, eval_loss=1.1)
    promote(store, FIRST, SPEC)
    promote(store, SECOND, SPEC)
    promote(store, FIRST, SPEC)  # the first run's promotion retried after a crash
    champion = read_champion(store, ALIAS)
    assert champion is not None and champion.version == "agent-g2"


def test_promotion_gates_again_against_the_champion_read_before_the_write(
    store: ArtifactStore,
) -> None:
    """A better model promoted since the run was gated wins: the run is rejected."""
    finished_run(store, FIRST, eval_loss=0.9)
    finished_run(store, SECOND, eval_loss=1.1)
    promote(store, FIRST, SPEC)
    with pytest.raises(ChampionChanged) as lost:
        promote(store, SECOND, make_spec(require_improvement=True))
    assert lost.value.verdict.reason == "NoImprovement"
    assert read_champion(store, ALIAS).version == "agent-g1"  # type: ignore[union-attr]


def test_concurrent_promotions_to_one_alias_lose_no_entry(store: ArtifactStore) -> None:
    """Eight runs promoted at once: every one ends up current or in the history."""
    runs = [RunPaths("ml", f"agent{index}", 1) for index in range(8)]
    for run in runs:
        finished_run(store, run, eval_loss=1.0)
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda run: promote(store, run, SPEC), runs))
    champion = read_champion(store, ALIAS)
    assert champion is not None
    versions = [champion.version] + [str(entry["version"]) for entry in champion.previous]
    assert sorted(versions) == sorted(run.version for run in runs)


def test_rollback_goes_back_and_records_it(store: ArtifactStore) -> None:
    finished_run(store, FIRST, eval_loss=1.2)
    finished_run(store, SECOND, eval_loss=1.1)
    first_uri = promote(store, FIRST, SPEC)
    promote(store, SECOND, SPEC)
    back = rollback(store, ALIAS)
    assert (back.version, back.uri, back.action) == ("agent-g1", first_uri, "rollback")
    assert [entry["version"] for entry in back.previous] == ["agent-g2"]
    assert read_champion(store, ALIAS) == back
    with pytest.raises(PromotionError, match="not an earlier version"):
        rollback(store, ALIAS, "agent-g7")


def test_finetune_rollback_moves_the_alias_back(local_store: LocalStore) -> None:
    finished_run(local_store, FIRST, eval_loss=1.2)
    finished_run(local_store, SECOND, eval_loss=1.1)
    promote(local_store, FIRST, SPEC)
    promote(local_store, SECOND, SPEC)
    where = ["--store", local_store.uri()]
    wrong = finetune("rollback", "ml/smollm2-135m", "agent-g9", *where, timeout=120)
    assert wrong.returncode == 1 and "agent-g9 is not an earlier version" in wrong.stdout
    done = finetune("rollback", "ml/smollm2-135m", *where, timeout=120)
    assert done.returncode == 0, done.stdout
    assert "now points at agent-g1" in " ".join(done.stdout.split())
    assert read_champion(local_store, ALIAS).version == "agent-g1"  # type: ignore[union-attr]


def test_many_promotions_at_once_all_succeed(store: ArtifactStore) -> None:
    """More runs promoted to one alias at once than a promotion has attempts (an operator
    finishing many lifecycles together): contention delays a promotion, never fails it."""
    runs = [RunPaths("ml", f"crowd{index}", 1) for index in range(32)]
    for run in runs:
        finished_run(store, run, eval_loss=1.0)
    with ThreadPoolExecutor(max_workers=len(runs)) as pool:
        uris = list(pool.map(lambda run: promote(store, run, SPEC), runs))
    assert len(set(uris)) == len(runs)
    champion = read_champion(store, ALIAS)
    assert champion is not None and champion.version in {run.version for run in runs}
