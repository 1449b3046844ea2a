"""Fixtures: the API emulator on localhost, a kubeconfig for it, and the running operator.

`cluster` runs each test twice: against the emulator (fast, runs everywhere) and against
the real kube-apiserver of tests/controlplane (the backend that decides)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import kmock
import pytest
import yaml

from finetune_core.store import S3Store
from finetune_operator.settings import OperatorSettings
from tests.controlplane.server import ControlPlane
from tests.integration.operator.emulator import ApiServer
from tests.integration.operator.harness import (
    NAMESPACE,
    Cluster,
    declare_resources,
    kubeconfig,
)
from tests.integration.operator.realserver import operator_kubeconfig, real_cluster

# Short enough that a timer tick never dominates a test.
PROGRESS_INTERVAL = 0.2
DATASET_KEY = "datasets/chat.jsonl"


@pytest.fixture
async def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ApiServer]:
    """The emulator, and KUBECONFIG pointing kopf and the operator's client at it."""
    async with ApiServer() as server, kmock.Server(server):
        declare_resources(server)
        path = tmp_path / "kubeconfig"
        path.write_text(yaml.safe_dump(kubeconfig(str(server.url).rstrip("/"))))
        monkeypatch.setenv("KUBECONFIG", str(path))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        yield server


@pytest.fixture
def settings(s3_env: dict[str, str]) -> OperatorSettings:
    return OperatorSettings(
        trainer_image="registry.test/finetune/trainer:test",
        store=s3_env["FINETUNE_STORE"],
        s3_endpoint=s3_env["FINETUNE_S3_ENDPOINT"],
        store_secret="store-credentials",
        progress_interval_seconds=PROGRESS_INTERVAL,
        supplemental_groups=[44, 992],
    )


@pytest.fixture(params=["emulator", "apiserver", "apiserver-namespaced"])
def cluster(request: pytest.FixtureRequest) -> Cluster:
    """The operator running against each backend, with a dataset in its bucket. On the real
    API server the operator authenticates as the chart's ServiceAccount, with only the
    permissions the chart grants: its ClusterRole, or (namespaced) its Role in the watched
    namespace."""
    fixture = "emulator_cluster" if request.param == "emulator" else "apiserver_cluster"
    harness: Cluster = request.getfixturevalue(fixture)
    return harness


@pytest.fixture
async def apiserver_cluster(
    request: pytest.FixtureRequest,
    control_plane: ControlPlane,
    s3_store: S3Store,
    settings: OperatorSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Cluster]:
    namespaced = request.node.callspec.params["cluster"] == "apiserver-namespaced"
    scope = "namespaced" if namespaced else "cluster"
    if namespaced:
        settings = settings.model_copy(update={"namespaces": [NAMESPACE]})
    s3_store.put_bytes(DATASET_KEY, b'{"messages": [{"role": "user", "content": "hi"}]}\n')
    harness = real_cluster(control_plane, s3_store, s3_store.uri(DATASET_KEY), settings)
    monkeypatch.setenv("KUBECONFIG", str(operator_kubeconfig(control_plane, scope)))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    harness.start_operator()
    try:
        yield harness
    finally:
        await harness.stop_operator()


@pytest.fixture
async def emulator_cluster(
    api: ApiServer, s3_store: S3Store, settings: OperatorSettings
) -> AsyncIterator[Cluster]:
    s3_store.put_bytes(DATASET_KEY, b'{"messages": [{"role": "user", "content": "hi"}]}\n')
    harness = Cluster(api, s3_store, s3_store.uri(DATASET_KEY), settings)
    harness.start_operator()
    try:
        yield harness
    finally:
        await harness.stop_operator()
