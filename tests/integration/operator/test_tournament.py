"""The operator runs a FineTuneTournament: candidate FineTuneJobs within maxParallel, the
winner ranked from their results and promoted, in the API emulator. The test plays the Job
controller and the pods of every candidate; the operator does the rest."""

from __future__ import annotations

import json
from typing import Any

from finetune_core.api import API_VERSION
from finetune_core.layout import AliasPaths, CurrentAlias, RunPaths
from finetune_core.lifecycle import APPROVE_ANNOTATION
from finetune_core.tournament import TOURNAMENT_KIND
from finetune_core.tournament_lifecycle import LABEL_CANDIDATE, LABEL_ROUND, LABEL_TOURNAMENT
from tests.integration.operator.harness import NAMESPACE, Cluster
from tests.support import stage_files
from tests.support.manifests import SMALL_SPEC

TERMINAL = ("Passed", "Rejected", "Failed")


def tournament(
    name: str, dataset: str, candidates: list[dict[str, Any]], **spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": TOURNAMENT_KIND,
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "template": {**SMALL_SPEC, "dataset": {"uri": dataset}},
            "candidates": candidates,
            **spec,
        },
    }


def children(cluster: Cluster, name: str) -> dict[str, dict[str, Any]]:
    """The tournament's FineTuneJobs that exist now, by name."""
    return {
        job: obj
        for job in [f"{name}-{c}" for c in ("a", "b", "c", "fast", "slow")]
        if not cluster.absent(job) and (obj := cluster.ftj(job))
    }


def unsettled(cluster: Cluster, name: str) -> list[str]:
    return sorted(
        job
        for job, obj in children(cluster, name).items()
        if (obj.get("status") or {}).get("observedGeneration") != obj["metadata"]["generation"]
        or obj["status"].get("phase") not in TERMINAL
    )


async def play(
    cluster: Cluster,
    job: str,
    *,
    eval_loss: float = 1.2,
    answer_p95: float = 2.5,
    bits_per_byte: float | None = None,
    fail: bool = False,
) -> str:
    """The pods and the Job controller of one candidate, from its training Job to the end
    of its benchmark; returns the phase the candidate's FineTuneJob settles in."""
    generation = cluster.ftj(job)["metadata"]["generation"]
    run = RunPaths(NAMESPACE, job, generation)
    train = (await cluster.wait_for_job(job, generation, "train"))["metadata"]["name"]
    await cluster.job_running(train)
    if fail:
        cluster.pod_failed(run, "train", "TrainingFailed", "CUDA out of memory")
        await cluster.job_failed(train, "BackoffLimitExceeded", "Job has reached the limit")
        return (await cluster.wait_for_phase(job, "Failed", generation))["phase"]
    cluster.pod_trained(run, eval_loss)
    await cluster.job_succeeded(train)
    bench = (await cluster.wait_for_job(job, generation, "benchmark"))["metadata"]["name"]
    cluster.pod_benchmarked(run, answer_p95)
    per_byte = eval_loss / 4 if bits_per_byte is None else bits_per_byte
    stage_files.evaluated(cluster.store, run, eval_loss, per_byte)  # as the stage writes it
    await cluster.job_succeeded(bench)
    phase = "Passed" if answer_p95 <= 6 else "Rejected"
    return (await cluster.wait_for_phase(job, phase, generation))["phase"]


async def test_three_candidates_one_misses_the_sla_the_lower_eval_loss_wins(
    emulator_cluster: Cluster,
) -> None:
    cluster = emulator_cluster
    candidates = [
        {"name": "a", "training": {"learningRate": 0.001}},
        {"name": "b", "training": {"learningRate": 0.0002}},
        {"name": "c", "lora": {"r": 32, "alpha": 32}},
    ]
    await cluster.create_tournament(tournament("cup", cluster.dataset, candidates, maxParallel=3))
    await cluster.wait_for(lambda: len(children(cluster, "cup")) == 3, "three candidates")
    uid = cluster.ftt("cup")["metadata"]["uid"]
    child = cluster.ftj("cup-c")
    assert child["metadata"]["ownerReferences"][0]["uid"] == uid
    labels = child["metadata"]["labels"]
    assert (labels[LABEL_TOURNAMENT], labels[LABEL_CANDIDATE], labels[LABEL_ROUND]) == (
        "cup",
        "c",
        "1",
    )
    assert child["spec"]["promotion"] == {
        "policy": "none",
        "alias": "cup",
        "requireImprovement": False,
    }
    assert child["spec"]["lora"] == {"r": 32, "alpha": 32}

    assert await play(cluster, "cup-a", eval_loss=1.30) == "Passed"
    assert await play(cluster, "cup-b", eval_loss=1.10) == "Passed"
    # The lowest loss of all, but its answers are too slow.
    assert await play(cluster, "cup-c", eval_loss=0.90, answer_p95=7.25) == "Rejected"

    status = await cluster.wait_for_tournament("cup", "Promoted")
    assert (status["winner"], status["leader"], status["done"]) == ("b", "b", "3/3")
    board = {e["name"]: e for e in status["leaderboard"]}
    assert {name: e.get("rank") for name, e in board.items()} == {"a": 2, "b": 1, "c": None}
    assert board["c"]["slaPassed"] is False
    assert board["b"]["evalLoss"] == 1.10
    alias = AliasPaths(NAMESPACE, "cup")
    current = CurrentAlias.model_validate(cluster.store.get_json(alias.current))
    assert current.version == "cup-g1-b"
    assert status["promotedModel"] == cluster.store.uri(alias.version_dir("cup-g1-b"))
    card = cluster.store.get_bytes(f"{alias.version_dir('cup-g1-b')}/README.md").decode()
    assert "## Tournament leaderboard" in card and "| 1 | b | Passed |" in card
    report = f"tournaments/{NAMESPACE}/cup/g1/report"
    leaderboard = json.loads(cluster.store.get_bytes(f"{report}/leaderboard.json"))
    assert leaderboard["winner"] == "b"
    assert [c["rank"] for c in leaderboard["candidates"]] == [2, 1, None]
    assert cluster.store.exists(f"{report}/index.html")
    # Events are posted in the background, after the status.
    await cluster.wait_for(
        lambda: "Promoted" in [e["reason"] for e in cluster.events("cup")], "the Promoted Event"
    )
    assert [e["reason"] for e in cluster.events("cup")].count("CandidateSettled") == 3
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions == {"Ready": "True", "Reconciling": "False", "Stalled": "False"}


async def test_max_parallel_one_never_has_two_training_and_a_failure_is_not_fatal(
    emulator_cluster: Cluster,
) -> None:
    cluster = emulator_cluster
    candidates = [{"name": "a"}, {"name": "b"}, {"name": "c"}]
    await cluster.create_tournament(tournament("one", cluster.dataset, candidates))
    outcomes = {"one-a": {"fail": True}, "one-b": {"eval_loss": 1.4}, "one-c": {"eval_loss": 1.5}}
    for job, outcome in outcomes.items():
        await cluster.wait_for(lambda job=job: job in children(cluster, "one"), job)
        assert unsettled(cluster, "one") == [job]
        await play(cluster, job, **outcome)
    status = await cluster.wait_for_tournament("one", "Promoted")
    assert status["winner"] == "b"
    assert {e["name"]: e["phase"] for e in status["leaderboard"]} == {
        "a": "Failed",
        "b": "Passed",
        "c": "Passed",
    }
    assert cluster.finetunejob_creations("one") == ["one-a", "one-b", "one-c"]


async def test_operator_restarts_between_steps_create_no_duplicate_child(
    emulator_cluster: Cluster,
) -> None:
    cluster = emulator_cluster
    candidates = [{"name": "fast"}, {"name": "slow"}]
    await cluster.create_tournament(tournament("tough", cluster.dataset, candidates))
    await cluster.wait_for(lambda: "tough-fast" in children(cluster, "tough"), "first child")
    await cluster.restart_operator()
    await play(cluster, "tough-fast", eval_loss=1.3)
    await cluster.restart_operator()
    await cluster.wait_for(lambda: "tough-slow" in children(cluster, "tough"), "second child")
    await cluster.stop_operator()  # the candidate finishes while no operator watches
    cluster.start_operator()
    await play(cluster, "tough-slow", eval_loss=1.2)
    await cluster.restart_operator()
    status = await cluster.wait_for_tournament("tough", "Promoted")
    assert status["winner"] == "slow"
    assert cluster.finetunejob_creations("tough") == ["tough-fast", "tough-slow"]


async def test_a_spec_edit_starts_generation_two(emulator_cluster: Cluster) -> None:
    cluster = emulator_cluster
    candidates = [{"name": "a"}, {"name": "b"}]
    await cluster.create_tournament(tournament("edit", cluster.dataset, candidates, maxParallel=2))
    await cluster.wait_for(lambda: len(children(cluster, "edit")) == 2, "both candidates")
    await play(cluster, "edit-a", eval_loss=1.1)
    await play(cluster, "edit-b", eval_loss=1.2)
    await cluster.wait_for_tournament("edit", "Promoted")

    template = {**SMALL_SPEC, "dataset": {"uri": cluster.dataset}, "training": {"maxSteps": 8}}
    await cluster.patch_tournament("edit", {"spec": {"template": template}})
    await cluster.wait_for(
        lambda: all(
            c["metadata"]["labels"][LABEL_ROUND] == "2" for c in children(cluster, "edit").values()
        ),
        "both candidates updated for generation 2",
    )
    # A merge patch of the template: its other training fields stay.
    assert cluster.ftj("edit-a")["spec"]["training"] == {"maxSteps": 8, "saveSteps": 2}
    assert cluster.ftj("edit-a")["metadata"]["generation"] == 2
    await play(cluster, "edit-a", eval_loss=1.3)
    await play(cluster, "edit-b", eval_loss=1.0)
    status = await cluster.wait_for_tournament("edit", "Promoted", generation=2)
    assert status["winner"] == "b"
    assert status["runs"][0]["generation"] == 1
    assert status["runs"][0]["winner"] == "a"
    alias = AliasPaths(NAMESPACE, "edit")
    current = CurrentAlias.model_validate(cluster.store.get_json(alias.current))
    assert current.version == "edit-g2-b"
    assert current.previous[0]["version"] == "edit-g1-a"
    assert cluster.finetunejob_creations("edit") == ["edit-a", "edit-b"]


async def test_a_manual_tournament_waits_for_approval_of_its_generation(
    emulator_cluster: Cluster,
) -> None:
    cluster = emulator_cluster
    candidates = [{"name": "a"}, {"name": "b"}]
    manual = {"policy": "manual", "alias": "approved-agent"}
    doc = tournament("gate", cluster.dataset, candidates, maxParallel=2, promotion=manual)
    await cluster.create_tournament(doc)
    await cluster.wait_for(lambda: len(children(cluster, "gate")) == 2, "both candidates")
    await play(cluster, "gate-a", eval_loss=1.1)
    await play(cluster, "gate-b", eval_loss=1.2)
    status = await cluster.wait_for_tournament("gate", "AwaitingApproval")
    assert status["winner"] == "a"
    assert f'{APPROVE_ANNOTATION}="1"' in status["message"]
    alias = AliasPaths(NAMESPACE, "approved-agent")
    assert not cluster.store.exists(alias.current)

    await cluster.patch_tournament(
        "gate", {"metadata": {"annotations": {APPROVE_ANNOTATION: "true"}}}
    )
    await cluster.wait_for(
        lambda: "InvalidApproval" in [e["reason"] for e in cluster.events("gate")],
        "a warning about the approval",
    )
    assert cluster.tournament_status("gate")["phase"] == "AwaitingApproval"

    await cluster.patch_tournament("gate", {"metadata": {"annotations": {APPROVE_ANNOTATION: "1"}}})
    status = await cluster.wait_for_tournament("gate", "Promoted")
    assert status["approvedGeneration"] == 1
    current = CurrentAlias.model_validate(cluster.store.get_json(alias.current))
    assert current.version == "gate-g1-a"
