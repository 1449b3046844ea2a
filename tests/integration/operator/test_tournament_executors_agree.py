"""One tournament lifecycle, two executors: the operator (child FineTuneJobs in the API
emulator, whose pods the test plays) and `finetune run tournament.yaml` (a `finetune run`
process per candidate, with the same scripted stages) reach the same tournament status."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from finetune_cli.local.tournament import run_tournament
from finetune_core.api import API_VERSION
from finetune_core.lifecycle import STAGES, without_nulls
from finetune_core.store import LocalStore
from finetune_core.tournament import TOURNAMENT_KIND
from tests.conftest import REPO
from tests.integration.operator.harness import NAMESPACE, Cluster
from tests.support import scripted_stage
from tests.support.manifests import SMALL_SPEC

NAME = "agree"
SCENARIOS = {f"{NAME}-a": "passes:1.3", f"{NAME}-b": "passes:1.1", f"{NAME}-c": "slow-answer:0.9"}


def tournament(dataset: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": TOURNAMENT_KIND,
        "metadata": {"name": NAME, "namespace": NAMESPACE},
        "spec": {
            "template": {**SMALL_SPEC, "dataset": {"uri": dataset}},
            "candidates": [
                {"name": "a", "training": {"learningRate": 0.001}},
                {"name": "b", "training": {"learningRate": 0.0002}},
                {"name": "c", "lora": {"r": 16}},
            ],
        },
    }


async def on_cluster(cluster: Cluster) -> dict[str, Any]:
    await cluster.create_tournament(tournament(cluster.dataset))
    for job, scenario in SCENARIOS.items():
        await cluster.wait_for(lambda job=job: not cluster.absent(job), f"FineTuneJob {job}")
        run_uri = cluster.store.uri(cluster.run(job).prefix)
        for stage in STAGES:
            name = (await cluster.wait_for_job(job, 1, stage))["metadata"]["name"]
            await cluster.job_running(name)
            scripted_stage.play(scenario, stage, run_uri)
            await cluster.job_succeeded(name)
    return await cluster.wait_for_tournament(NAME, "Promoted")


def on_local(directory: Path, dataset: str, endpoint: str) -> dict[str, Any]:
    path = directory / "tournament.yaml"
    path.write_text(yaml.safe_dump(tournament(dataset)))

    def command(manifest: Path, store: str, _: str | None) -> list[str]:
        module = "tests.support.scripted_run"
        return [
            sys.executable,
            "-m",
            module,
            json.dumps(SCENARIOS),
            str(manifest),
            "--store",
            store,
            "--s3-endpoint",
            endpoint,
        ]

    assert run_tournament(path, str(directory / "store"), endpoint, command=command) == 0
    local = LocalStore(directory / "store").get_json(f"tournaments/{NAMESPACE}/{NAME}/local.json")
    status: dict[str, Any] = local["status"]
    return status


def comparable(status: dict[str, Any], store_uri: str) -> dict[str, Any]:
    normalized: dict[str, Any] = without_nulls(
        json.loads(json.dumps(status).replace(store_uri, "<store>"))
    )
    normalized.pop("startedAt", None)
    for condition in normalized.get("conditions", []):
        condition.pop("lastTransitionTime", None)
    return normalized


async def test_the_operator_and_finetune_run_reach_the_same_tournament_status(
    emulator_cluster: Cluster,
    s3_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cluster = emulator_cluster
    in_cluster = comparable(await on_cluster(cluster), cluster.store.uri())
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    monkeypatch.setenv("PYTHONPATH", path)  # the scripted stages import tests.support
    local = on_local(tmp_path, cluster.dataset, s3_env["FINETUNE_S3_ENDPOINT"])
    assert comparable(local, str((tmp_path / "store").resolve())) == in_cluster
    assert in_cluster["winner"] == "b"
