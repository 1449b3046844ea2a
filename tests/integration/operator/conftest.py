"""Fixtures: the API emulator on localhost, a kubeconfig for it, and the running operator."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import kmock
import pytest
import yaml

from finetune_core.store import S3Store
from finetune_operator.settings import OperatorSettings
from tests.integration.operator.emulator import ApiServer
from tests.integration.operator.harness import Cluster, declare_resources, kubeconfig

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


@pytest.fixture
async def cluster(
    api: ApiServer, s3_store: S3Store, settings: OperatorSettings
) -> AsyncIterator[Cluster]:
    """The operator running against the emulator, with a dataset in its bucket."""
    s3_store.put_bytes(DATASET_KEY, b'{"messages": [{"role": "user", "content": "hi"}]}\n')
    harness = Cluster(api, s3_store, s3_store.uri(DATASET_KEY), settings)
    harness.start_operator()
    try:
        yield harness
    finally:
        await harness.stop_operator()
