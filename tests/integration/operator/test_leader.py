"""Leader election: of two operators against the same API only the Lease's holder reconciles,
and when it stops or dies the other takes over and finishes what it started."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import kmock
import pytest

from finetune_core.store import S3Store
from finetune_operator.metrics import OperatorMetrics
from finetune_operator.settings import OperatorSettings
from tests.integration.operator.emulator import OPERATOR_AGENTS, ApiServer
from tests.integration.operator.harness import (
    LEASES,
    TIMEOUT,
    Cluster,
    OperatorThread,
)
from tests.support.manifests import small_job

LEASE_NAMESPACE = "finetune-system"
LEASE_NAME = "finetune-operator"
# Short, so that a takeover after a crash is quick; the ratios are those of the defaults.
LEASE = {
    "lease_namespace": LEASE_NAMESPACE,
    "lease_duration_seconds": 3.0,
    "lease_renew_deadline_seconds": 2.0,
    "lease_retry_period_seconds": 0.3,
}
TAKEOVER = 30.0  # the contract: a dead leader is replaced within this


def holder(api: ApiServer) -> str | None:
    key = (LEASES, LEASE_NAMESPACE, LEASE_NAME)
    if key not in api.objects or api.objects[key].deleted:
        return None
    identity: str | None = api.objects[key].raw["spec"].get("holderIdentity")
    return identity


def creations(cluster: Cluster, owner: str) -> list[str]:
    return cluster.job_creations(owner)


async def test_two_operators_reconcile_as_one_and_hand_over_on_stop(
    api: ApiServer, s3_store: S3Store, settings: OperatorSettings
) -> None:
    s3_store.put_bytes("datasets/chat.jsonl", b"{}\n")
    cluster = Cluster(api, s3_store, s3_store.uri("datasets/chat.jsonl"))
    operators = {
        name: OperatorThread(
            settings.model_copy(update={**LEASE, "leader_identity": name}), OperatorMetrics()
        )
        for name in ("alpha", "beta")
    }
    try:
        first = await cluster.wait_for(lambda: holder(api), "a leader")
        await cluster.create(small_job("shared", cluster.dataset))
        train = await cluster.wait_for_job("shared", 1, "train")
        await cluster.wait_for_phase("shared", "Pending")
        await cluster.job_running(train["metadata"]["name"])
        await cluster.wait_for_phase("shared", "Training")

        await operators.pop(first).stop()  # a clean stop releases the Lease at once
        second = await cluster.wait_for(
            lambda: (h := holder(api)) not in (None, first) and h, "the other operator leading"
        )
        assert second in operators
        await cluster.finish("shared", train)
        # Two operators, one reconciler: each Job asked for exactly once.
        assert creations(cluster, "shared") == ["shared-g1-train", "shared-g1-bench"]
        lease = api.objects[LEASES, LEASE_NAMESPACE, LEASE_NAME].raw["spec"]
        assert lease["leaseTransitions"] >= 1
    finally:
        for operator in operators.values():
            await operator.stop()


async def test_a_standby_operator_touches_nothing(
    api: ApiServer, s3_store: S3Store, settings: OperatorSettings
) -> None:
    """While another process holds the Lease, an operator neither writes to the objects
    (no finalizer, no kopf annotations, no status) nor creates Jobs."""
    await api.request(
        "POST",
        f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases",
        json={
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": LEASE_NAME},
            "spec": {"holderIdentity": "elsewhere", "leaseDurationSeconds": 3600},
        },
    )
    s3_store.put_bytes("datasets/chat.jsonl", b"{}\n")
    cluster = Cluster(api, s3_store, s3_store.uri("datasets/chat.jsonl"))
    created = await cluster.create(small_job("idle", cluster.dataset))
    version = created["metadata"]["resourceVersion"]
    standby = OperatorThread(
        settings.model_copy(update={**LEASE, "leader_identity": "standby"}), OperatorMetrics()
    )
    try:
        # It has asked for the Lease a few times (every retry period) and given way.
        reads = await cluster.wait_for(
            lambda: (n := _lease_reads(api)) >= 5 and n, "a few attempts at the Lease"
        )
        assert reads >= 5
        assert cluster.ftj("idle")["metadata"]["resourceVersion"] == version
        assert cluster.job_creations("idle") == []
        assert holder(api) == "elsewhere"
    finally:
        await standby.stop()


def _lease_reads(api: ApiServer) -> int:
    return sum(
        1 for request in api.served() if request.method == "GET" and request.resource == LEASES
    )


async def test_a_killed_leader_is_replaced_and_the_run_finishes(
    api: ApiServer, s3_store: S3Store, s3_env: dict[str, str], tmp_path: Path
) -> None:
    """Two `finetune operator` processes; SIGKILL the leader (no release: the Lease must
    expire) → the other leads within 30 s and finishes the lifecycle, with one Job per
    stage."""
    s3_store.put_bytes("datasets/chat.jsonl", b"{}\n")
    cluster = Cluster(api, s3_store, s3_store.uri("datasets/chat.jsonl"))
    processes: dict[str, asyncio.subprocess.Process] = {}
    for name in ("one", "two"):
        env = {
            **os.environ,
            "FINETUNE_HEALTH_PORT": "0",
            "FINETUNE_METRICS_PORT": "0",
            "FINETUNE_PROGRESS_INTERVAL": "0.2",
            "FINETUNE_TRAINER_IMAGE": "registry.test/finetune/trainer:test",
            "FINETUNE_LEADER_IDENTITY": name,
            "FINETUNE_LEASE_NAMESPACE": LEASE_NAMESPACE,
            "FINETUNE_LEASE_DURATION": "3",
            "FINETUNE_LEASE_RENEW_DEADLINE": "2",
            "FINETUNE_LEASE_RETRY_PERIOD": "0.3",
        }
        with (tmp_path / f"{name}.log").open("wb") as log:
            processes[name] = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "finetune_cli",
                "operator",
                env=env,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
    try:
        await cluster.create(small_job("survivor", cluster.dataset))
        train = await cluster.wait_for_job("survivor", 1, "train")
        await cluster.wait_for_phase("survivor", "Pending")
        leader = holder(api)
        assert leader in processes
        processes[leader].send_signal(signal.SIGKILL)
        await processes.pop(leader).wait()

        await cluster.job_running(train["metadata"]["name"])  # seen by nobody until takeover
        (other,) = processes
        await cluster.wait_for(lambda: holder(api) == other, "the survivor leading", TAKEOVER)
        await cluster.wait_for_phase("survivor", "Training")
        await cluster.finish("survivor", train)
        assert creations(cluster, "survivor") == ["survivor-g1-train", "survivor-g1-bench"]
    finally:
        for process in processes.values():
            process.send_signal(signal.SIGTERM)
        codes: list[Any] = [
            await asyncio.wait_for(process.wait(), TIMEOUT) for process in processes.values()
        ]
    assert codes == [0]


def from_operator(request: kmock.Request) -> bool:
    agent = next((v for k, v in request.headers.items() if k.lower() == "user-agent"), "")
    return agent.startswith(OPERATOR_AGENTS)


async def set_holder(cluster: Cluster, identity: str | None, duration: int) -> None:
    """Another candidate's write to the Lease (as a usurper would, or releasing it)."""
    response = await cluster.api.request(
        "PATCH",
        f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases/{LEASE_NAME}",
        json={"spec": {"holderIdentity": identity, "leaseDurationSeconds": duration}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    async with response:
        assert response.status == 200, await response.text()


async def test_a_leader_that_loses_the_lease_writes_nothing_until_it_leads_again(
    emulator_cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    """Another holder takes the Lease (a renewal that came too late, a partition): the
    operator stops kopf and writes nothing until it holds the Lease again; then kopf starts
    afresh in the same process, picks up what happened meanwhile and finishes the run."""
    cluster = emulator_cluster
    caplog.set_level(logging.INFO, logger="finetune_operator.leader")
    await cluster.create(small_job("regained", cluster.dataset))
    run = cluster.run("regained")
    train = await cluster.wait_for_job("regained", 1, "train")
    await cluster.wait_for_phase("regained", "Pending")
    own = holder(cluster.api)
    assert own

    await set_holder(cluster, "usurper", 3600)
    await cluster.wait_for(
        lambda: any("lost the leadership" in r.getMessage() for r in caplog.records),
        "the operator to give the leadership up",
    )
    quiet_from = len(cluster.api.served())
    await cluster.job_running(train["metadata"]["name"])  # nobody may reconcile this now
    cluster.pod_trained(run)
    await cluster.job_succeeded(train["metadata"]["name"])
    await set_holder(cluster, None, 1)  # the usurper releases it

    await cluster.wait_for(lambda: holder(cluster.api) == own, "the operator leading again")
    since = cluster.api.served()[quiet_from:]
    # The window ends with the operator's write that took the Lease back.
    end = next(
        i
        for i, r in enumerate(since)
        if r.resource == LEASES and r.method == "PATCH" and from_operator(r)
    )
    writes = [
        f"{r.method} {r.url.path}"
        for r in since[:end]
        if from_operator(r) and r.method in ("POST", "PATCH", "PUT", "DELETE")
    ]
    assert writes == []

    bench = await cluster.wait_for_job("regained", 1, "benchmark")
    cluster.pod_benchmarked(run)
    await cluster.job_succeeded(bench["metadata"]["name"])
    await cluster.wait_for_phase("regained", "Promoted")
    assert creations(cluster, "regained") == ["regained-g1-train", "regained-g1-bench"]
