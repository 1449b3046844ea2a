"""`finetune run tournament.yaml`: each candidate is a real `finetune run` process of its own
FineTuneJob (with scripted stages), the winner is ranked and promoted, as in a cluster."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from finetune_cli.local.tournament import approve_tournament, run_tournament
from finetune_core.api import API_VERSION
from finetune_core.layout import AliasPaths, CurrentAlias
from finetune_core.manifest import validate_file
from finetune_core.runs import find_runs
from finetune_core.store import LocalStore
from finetune_core.tournament import TOURNAMENT_KIND
from tests.conftest import REPO
from tests.support.manifests import SMALL_SPEC

NAME = "cup"
CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


@pytest.fixture(autouse=True)
def scripted_stages_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    """The children import tests.support (their scripted stages)."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    monkeypatch.setenv("PYTHONPATH", path)


def manifest(directory: Path, candidates: list[dict[str, Any]], **spec: Any) -> Path:
    (directory / "chat.jsonl").write_text(json.dumps(CHAT) + "\n")
    doc = {
        "apiVersion": API_VERSION,
        "kind": TOURNAMENT_KIND,
        "metadata": {"name": NAME},
        "spec": {
            "template": {**SMALL_SPEC, "dataset": {"uri": "chat.jsonl"}},  # manifest-relative
            "candidates": candidates,
            **spec,
        },
    }
    path = directory / "tournament.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def scripted(scenarios: dict[str, str]) -> Any:
    def command(path: Path, store: str, endpoint: str | None) -> list[str]:
        module = "tests.support.scripted_run"
        return [sys.executable, "-m", module, json.dumps(scenarios), str(path), "--store", store]

    return command


CANDIDATES = [
    {"name": "a", "training": {"learningRate": 0.001}},
    {"name": "b", "training": {"learningRate": 0.0002}},
    {"name": "c", "lora": {"r": 16}},
]


def test_candidates_run_one_after_another_and_the_best_that_passed_is_promoted(
    tmp_path: Path,
) -> None:
    path = manifest(tmp_path, CANDIDATES)
    assert validate_file(path) == []
    store = tmp_path / "store"
    scenarios = {
        f"{NAME}-a": "passes:1.3",
        f"{NAME}-b": "passes:1.1",
        f"{NAME}-c": "slow-answer:0.9",
    }
    assert run_tournament(path, str(store), None, command=scripted(scenarios)) == 0

    artifacts = LocalStore(store)
    current = CurrentAlias.model_validate(artifacts.get_json(AliasPaths("local", NAME).current))
    assert current.version == f"{NAME}-g1-b"
    board = json.loads(artifacts.get_bytes(f"tournaments/local/{NAME}/g1/report/leaderboard.json"))
    assert board["winner"] == "b"
    assert board["metric"] == "bitsPerByte"
    assert [(c["name"], c["phase"], c["rank"]) for c in board["candidates"]] == [
        ("a", "Passed", 2),
        ("b", "Passed", 1),
        ("c", "Rejected", None),
    ]
    # Each candidate is a FineTuneJob run of its own, never promoted by itself.
    assert sorted(run.name for run in find_runs(artifacts)) == [f"{NAME}-{c}" for c in "abc"]
    # Running the same manifest again reports the result; nothing runs again.
    assert run_tournament(path, str(store), None, command=scripted({})) == 0
    assert len(find_runs(artifacts)) == 3


def test_no_candidate_meeting_the_sla_exits_2(tmp_path: Path) -> None:
    path = manifest(tmp_path, CANDIDATES[:2])
    scenarios = {f"{NAME}-a": "slow-answer", f"{NAME}-b": "bad-dataset"}
    store = tmp_path / "store"
    assert run_tournament(path, str(store), None, 2, command=scripted(scenarios)) == 2
    assert not LocalStore(store).exists(AliasPaths("local", NAME).current)


def test_an_invalid_tournament_exits_1_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = manifest(tmp_path, [CANDIDATES[0], {"name": "b", "lora": {"r": 0}}])
    assert run_tournament(path, str(tmp_path / "store"), None) == 1
    assert "spec.candidates[1].lora.r: must be >= 1" in capsys.readouterr().out
    assert validate_file(path) == [f"{path}: spec.candidates[1].lora.r: must be >= 1"]


def test_a_manual_tournament_waits_until_finetune_approve(tmp_path: Path) -> None:
    path = manifest(tmp_path, CANDIDATES[:2], promotion={"policy": "manual"})
    store = tmp_path / "store"
    scenarios = {f"{NAME}-a": "passes:1.3", f"{NAME}-b": "passes:1.2"}
    assert run_tournament(path, str(store), None, command=scripted(scenarios)) == 0
    alias = AliasPaths("local", NAME)
    assert not LocalStore(store).exists(alias.current)
    assert approve_tournament("nobody", str(store), None) is None  # not a tournament
    assert approve_tournament(f"local/{NAME}", str(store), None) == 0
    current = CurrentAlias.model_validate(LocalStore(store).get_json(alias.current))
    assert current.version == f"{NAME}-g1-b"
    assert approve_tournament(NAME, str(store), None) == 1  # Promoted: nothing to approve


def test_an_interrupted_tournament_resumes_its_unfinished_candidate(tmp_path: Path) -> None:
    path = manifest(tmp_path, CANDIDATES[:2])
    store = tmp_path / "store"
    scenarios = {f"{NAME}-a": "passes:1.3", f"{NAME}-b": "passes:1.2"}
    assert run_tournament(path, str(store), None, command=scripted(scenarios)) == 0
    artifacts = LocalStore(store)
    # As if the tournament had been stopped while b trained: b's run is not finished.
    status_key = f"runs/local/{NAME}-b/g1/status.json"
    status = artifacts.get_json(status_key)
    artifacts.put_json(status_key, {**status, "phase": "Training"})
    record_key = f"tournaments/local/{NAME}/local.json"
    record = artifacts.get_json(record_key)
    record["status"] = {**record["status"], "phase": "Running"}
    artifacts.put_json(record_key, record)

    assert run_tournament(path, str(store), None, command=scripted(scenarios)) == 0
    assert artifacts.get_json(status_key)["phase"] == "Passed"
    assert artifacts.get_json(record_key)["status"]["phase"] == "Promoted"
