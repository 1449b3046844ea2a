"""The artifact store against a real MinIO server (built and started with the control
plane), not only moto's S3 emulation: the store's contract, then a whole operator lifecycle
with the real API server and the real object store, only the pods played by the test."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from finetune_core.store import S3Store
from finetune_operator.settings import OperatorSettings
from tests.controlplane.server import ControlPlane
from tests.integration.operator.realserver import real_cluster
from tests.integration.operator.test_lifecycle import (
    test_passing_run_is_trained_benchmarked_and_promoted as passing_run,
)
from tests.integration.test_store import test_round_trip_and_listing as round_trip


@pytest.fixture
def minio(control_plane: ControlPlane) -> dict[str, str]:
    s3 = control_plane.s3()
    assert s3 is not None, "the control plane started no MinIO (hack/control-plane/build)"
    return s3


@pytest.fixture
def minio_store(minio: dict[str, str]) -> Iterator[S3Store]:
    store = S3Store(
        f"ft-{uuid.uuid4().hex[:12]}",
        endpoint=minio["endpoint"],
        access_key=minio["accessKey"],
        secret_key=minio["secretKey"],
        retries=2,
        backoff_seconds=0.05,
    )
    store.ensure_bucket()
    yield store
    store.delete_prefix("")


def test_store_contract_on_minio(minio_store: S3Store, tmp_path: Path) -> None:
    round_trip(minio_store, tmp_path)


def test_wrong_credentials_are_refused_at_once(minio: dict[str, str]) -> None:
    """moto accepts any credentials; MinIO checks the signature, and the store does not
    retry a refusal that a retry cannot cure."""
    from minio.error import S3Error

    store = S3Store(
        "anything",
        endpoint=minio["endpoint"],
        access_key=minio["accessKey"],
        secret_key="not-the-secret",
        retries=5,
        backoff_seconds=10.0,  # one retry would wait this long
    )
    started = time.monotonic()
    with pytest.raises(S3Error) as refused:
        store.ensure_bucket()
    assert refused.value.code == "SignatureDoesNotMatch"
    assert time.monotonic() - started < 10.0


async def test_lifecycle_with_minio_as_the_store(
    control_plane: ControlPlane,
    minio: dict[str, str],
    minio_store: S3Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in {
        "AWS_ACCESS_KEY_ID": minio["accessKey"],
        "AWS_SECRET_ACCESS_KEY": minio["secretKey"],
    }.items():
        monkeypatch.setenv(key, value)
    settings = OperatorSettings(
        trainer_image="registry.test/finetune/trainer:test",
        store=minio_store.uri(),
        s3_endpoint=minio["endpoint"],
        store_secret="store-credentials",
        progress_interval_seconds=0.2,
        supplemental_groups=[44, 992],
    )
    minio_store.put_bytes(
        "datasets/chat.jsonl", b'{"messages": [{"role": "user", "content": "hi"}]}\n'
    )
    cluster = real_cluster(
        control_plane, minio_store, minio_store.uri("datasets/chat.jsonl"), settings
    )
    monkeypatch.setenv("KUBECONFIG", str(control_plane.kubeconfig))
    cluster.start_operator()
    try:
        await passing_run(cluster)
    finally:
        await cluster.stop_operator()
