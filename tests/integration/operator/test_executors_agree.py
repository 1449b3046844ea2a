"""One lifecycle, two executors: the operator (Jobs in the API emulator) and `finetune run`
(child processes) reach the same status for the same situation.

Each scenario runs twice: in the cluster, where the test plays the Job controller and the
pods (writing the stage files with tests.support.scripted_stage), and locally, where the
executor runs the same scripted stages as processes. The two final statuses must be equal
but for where the store is and when things happened.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from finetune_cli.local.executor import approve_run, rebenchmark_run, run_manifest
from finetune_core.lifecycle import (
    APPROVE_ANNOTATION,
    REBENCHMARK_ANNOTATION,
    STAGES,
    StageName,
    without_nulls,
)
from finetune_core.runs import latest_run
from finetune_core.store import LocalStore
from tests.conftest import REPO
from tests.integration.operator.harness import NAMESPACE, Cluster
from tests.support import scripted_stage
from tests.support.manifests import small_job

NAME = "agent"


@dataclass(frozen=True)
class Scenario:
    script: str
    settles_in: str
    spec: dict[str, Any] = field(default_factory=dict)
    approve: bool = False
    rebenchmark: bool = False  # then measured again: round 2


SCENARIOS = {
    "promoted": Scenario("passes", "Promoted"),
    "rejected": Scenario("slow-answer", "Rejected"),
    "invalid-dataset": Scenario("bad-dataset", "Failed"),
    "passed": Scenario("passes", "Passed", {"promotion": {"policy": "none"}}),
    "approved": Scenario("passes", "AwaitingApproval", {"promotion": {"policy": "manual"}}, True),
    "rebenchmarked": Scenario("slow-then-fast", "Rejected", rebenchmark=True),
    "review-score-low": Scenario("passes", "Rejected", {"promotion": {"minBleu": 50}}),
    "merged": Scenario(
        "passes-merged", "Promoted", {"promotion": {"export": ["adapter", "merged"]}}
    ),
}


async def on_cluster(cluster: Cluster, scenario: Scenario) -> dict[str, Any]:
    await cluster.create(small_job(NAME, cluster.dataset, **scenario.spec))
    run_uri = cluster.store.uri(cluster.run(NAME).prefix)
    for stage in STAGES:
        job = (await cluster.wait_for_job(NAME, 1, stage))["metadata"]["name"]
        await cluster.job_running(job)
        await cluster.wait_for_phase(NAME, "Training" if stage == "train" else "Benchmarking")
        code = scripted_stage.play(scenario.script, stage, run_uri)
        if code:
            message = f"container trainer exited with code {code} matching a FailJob rule"
            await cluster.job_failed(job, "PodFailurePolicy", message)
            break
        await cluster.job_succeeded(job)
    status = await cluster.wait_for_phase(NAME, scenario.settles_in)
    if scenario.approve:
        await cluster.patch(NAME, {"metadata": {"annotations": {APPROVE_ANNOTATION: "1"}}})
        status = await cluster.wait_for_phase(NAME, "Promoted")
    if scenario.rebenchmark:
        await cluster.patch(NAME, {"metadata": {"annotations": {REBENCHMARK_ANNOTATION: "1"}}})
        job = (await cluster.wait_for_job(NAME, 1, "benchmark", round=2))["metadata"]["name"]
        await cluster.job_running(job)
        await cluster.wait_for_phase(NAME, "Benchmarking")
        assert scripted_stage.play(scenario.script, "benchmark", run_uri, round=2) == 0
        await cluster.job_succeeded(job)
        status = await cluster.wait_for_phase(NAME, "Promoted")
    return status


def on_local(directory: Path, dataset: str, endpoint: str, scenario: Scenario) -> dict[str, Any]:
    def command(stage: StageName, run_uri: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "tests.support.scripted_stage",
            scenario.script,
            stage,
            "--run",
            run_uri,
        ]

    manifest = small_job(NAME, dataset, **scenario.spec)
    manifest["metadata"]["namespace"] = NAMESPACE
    path = directory / "job.yaml"
    path.write_text(yaml.safe_dump(manifest))
    store = directory / "store"
    run_manifest(path, str(store), endpoint, command)
    if scenario.approve:
        assert approve_run(f"{NAMESPACE}/{NAME}", str(store), endpoint, command) == 0
    if scenario.rebenchmark:
        assert rebenchmark_run(path, str(store), endpoint, command) == 0
    snapshot = latest_run(LocalStore(store), NAMESPACE, NAME)
    assert snapshot is not None
    return snapshot.status.to_wire()


def comparable(status: dict[str, Any], store_uri: str) -> dict[str, Any]:
    """The status with the store's location and the moments of transitions left out."""
    normalized: dict[str, Any] = without_nulls(
        json.loads(json.dumps(status).replace(store_uri, "<store>"))
    )
    normalized.pop("startedAt", None)
    for condition in normalized.get("conditions", []):
        condition.pop("lastTransitionTime", None)
    return normalized


@pytest.mark.parametrize("name", SCENARIOS)
async def test_the_operator_and_finetune_run_reach_the_same_status(
    name: str,
    cluster: Cluster,
    s3_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scenario = SCENARIOS[name]
    in_cluster = comparable(await on_cluster(cluster, scenario), cluster.store.uri())
    # The scripted stages import tests.support (and whatever the caller's path puts first).
    inherited = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), inherited])))
    local = on_local(tmp_path, cluster.dataset, s3_env["FINETUNE_S3_ENDPOINT"], scenario)
    assert comparable(local, str((tmp_path / "store").resolve())) == in_cluster
    regated = scenario.approve or scenario.rebenchmark
    assert in_cluster["phase"] == ("Promoted" if regated else scenario.settles_in)
    if scenario.script != "bad-dataset":  # benchmarked: evaluation.json's figures
        assert in_cluster["evaluation"]["adapterBleu"] == 6.25
    assert {c["type"]: c["status"] for c in in_cluster["conditions"]} == {
        "Ready": "True" if in_cluster["phase"] in ("Promoted", "Passed") else "False",
        "Reconciling": "False",
        "Stalled": "True" if in_cluster["phase"] in ("Failed", "Rejected") else "False",
    }
