"""Fixtures shared by every test: an S3 server on localhost and stores on it."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

from finetune_core.store import LocalStore, S3Store
from tests.controlplane.server import (  # the real control plane, for every tier
    control_plane,  # noqa: F401
    pytest_collection_finish,  # noqa: F401
)

# The property tests search the same examples on every run: a suite that fails, fails again
# (a new search is a change to a test, not luck of the draw). `HYPOTHESIS_PROFILE=explore`
# searches afresh.
hypothesis_settings.register_profile("repeatable", derandomize=True, print_blob=True)
hypothesis_settings.register_profile("explore", derandomize=False)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

REPO = Path(__file__).resolve().parents[1]
DEMO_DATASET = REPO / "manifests" / "examples" / "datasets" / "devassist.jsonl"

# progress.json's keys, as docs/architecture.md's file contracts list them.
PROGRESS_CONTRACT_KEYS = {
    "step",
    "totalSteps",
    "epoch",
    "loss",
    "learningRate",
    "tokensPerSecond",
    "etaSeconds",
    "updatedAt",
}

# The S3 test server accepts any credentials; the pods read them from these variables.
TEST_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test-access-key", "AWS_SECRET_ACCESS_KEY": "test-secret"}


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on a free localhost port, for the whole session."""
    from moto.server import ThreadedMotoServer

    # The server thread logs each request; after a test's output capture has closed, that
    # logging only prints "Logging error" tracebacks.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment a pod or the operator would get: endpoint and credentials."""
    bucket = f"ft-{uuid.uuid4().hex[:12]}"
    env = {
        "FINETUNE_STORE": f"s3://{bucket}",
        "FINETUNE_S3_ENDPOINT": s3_endpoint,
        **TEST_CREDENTIALS,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    S3Store(
        bucket,
        endpoint=s3_endpoint,
        access_key=env["AWS_ACCESS_KEY_ID"],
        secret_key=env["AWS_SECRET_ACCESS_KEY"],
    ).ensure_bucket()
    return env


@pytest.fixture
def s3_store(s3_env: dict[str, str]) -> S3Store:
    """A fresh bucket on the S3 server, through the real minio client."""
    return S3Store(
        s3_env["FINETUNE_STORE"].removeprefix("s3://"),
        endpoint=s3_env["FINETUNE_S3_ENDPOINT"],
        access_key=s3_env["AWS_ACCESS_KEY_ID"],
        secret_key=s3_env["AWS_SECRET_ACCESS_KEY"],
        retries=2,
        backoff_seconds=0.05,
    )


@pytest.fixture
def local_store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


@pytest.fixture(autouse=True)
def _isolated_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keep tests off the user's store; keep the model cache shared across the session."""
    monkeypatch.delenv("FINETUNE_STORE", raising=False)
    monkeypatch.delenv("FINETUNE_S3_ENDPOINT", raising=False)
    cache = os.environ.get("FINETUNE_CACHE") or str(Path.home() / ".cache" / "finetune")
    monkeypatch.setenv("FINETUNE_CACHE", cache)
