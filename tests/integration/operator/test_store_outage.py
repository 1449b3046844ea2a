"""The store goes down in the middle of a promotion (the S3 server stops while the adapter is
being copied) and comes back on the same port: no alias ever points at a half-copied model,
and the promotion completes once the store is back.

The contract, not the mechanism: whatever promotion does (copy then alias, conditional
writes), at every moment the alias either does not name this run's version or names a copy
that holds the whole adapter. The bucket is watched from inside the S3 server's process
(moto's in-memory backend, exact even while the server is down).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from moto.core import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends
from moto.server import ThreadedMotoServer

from finetune_core.store import S3Store
from finetune_operator.metrics import OperatorMetrics
from finetune_operator.settings import OperatorSettings
from tests.conftest import TEST_CREDENTIALS
from tests.integration.operator.emulator import ApiServer
from tests.integration.operator.harness import Cluster
from tests.support.manifests import small_job

ADAPTER_SHARDS = 300  # enough small files that the copy takes a while
BUCKET = "outage"


class S3Server:
    """moto's S3 server on a fixed port, which can be stopped (connections refused) and
    started again; its objects live in this process and survive."""

    def __init__(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port: int = probe.getsockname()[1]
        self._server: ThreadedMotoServer | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()
            # shutdown() only stops serving: close the socket too, so that connections are
            # refused rather than left waiting in the backlog.
            assert server._server is not None
            server._server.server_close()


def _bucket(bucket: str) -> Any:
    return s3_backends[DEFAULT_ACCOUNT_ID]["global"].buckets.get(bucket)


def stored_keys(bucket: str) -> list[str]:
    """The bucket's keys as the server holds them, read in-process."""
    found = _bucket(bucket)
    return [] if found is None else list(found.keys)


def stored_value(bucket: str, key: str) -> bytes:
    return bytes(_bucket(bucket).keys[key].value)


class AliasWatch:
    """Checks, as often as it can, that every alias names a complete copy."""

    def __init__(self, bucket: str, adapter_files: set[str]):
        self.bucket = bucket
        self.adapter_files = adapter_files
        self.violations: list[str] = []
        self.checks = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> AliasWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def check(self) -> None:
        stored = stored_keys(self.bucket)
        for key in stored:
            if not key.endswith("/current.json"):
                continue
            alias = json.loads(stored_value(self.bucket, key))
            copy = alias["uri"].removeprefix(f"s3://{self.bucket}/")
            present = {k.removeprefix(f"{copy}/adapter/") for k in stored if k.startswith(copy)}
            missing = self.adapter_files - present
            if missing:
                self.violations.append(f"{key} -> {copy}: {len(missing)} adapter files missing")
        self.checks += 1

    def _run(self) -> None:
        # A short pause between looks leaves the operator and the server their share of
        # the interpreter (they run in this process too).
        while not self._stop.wait(0.005):
            try:
                self.check()
            except (RuntimeError, KeyError, ValueError):  # changed while read: look again
                continue


@pytest.fixture
def s3_server() -> Iterator[S3Server]:
    server = S3Server()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def copied_shards(bucket: str) -> int:
    return sum(
        1 for key in stored_keys(bucket) if key.startswith("models/") and "/adapter/shard-" in key
    )


async def test_a_store_outage_mid_promotion_never_exposes_a_half_copied_model(
    api: ApiServer,
    s3_server: S3Server,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for key, value in TEST_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    store = S3Store(
        BUCKET,
        endpoint=s3_server.endpoint,
        access_key=TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        secret_key=TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )
    store.ensure_bucket()
    store.put_bytes("datasets/chat.jsonl", b"{}\n")
    settings = OperatorSettings(
        trainer_image="registry.test/finetune/trainer:test",
        store=f"s3://{BUCKET}",
        s3_endpoint=s3_server.endpoint,
        progress_interval_seconds=0.2,
    )
    cluster = Cluster(
        api, store, store.uri("datasets/chat.jsonl"), settings, metrics=OperatorMetrics()
    )
    cluster.start_operator()
    try:
        await cluster.create(small_job("outage", cluster.dataset))
        run = cluster.run("outage")
        train = await cluster.wait_for_job("outage", 1, "train")
        cluster.pod_trained(run)
        await asyncio.to_thread(write_shards, store, run.adapter)
        adapter = {k.removeprefix(f"{run.adapter}/") for k in store.list(run.adapter)}
        await cluster.job_succeeded(train["metadata"]["name"])
        bench = await cluster.wait_for_job("outage", 1, "benchmark")
        cluster.pod_benchmarked(run)

        with AliasWatch(BUCKET, adapter) as watch:
            caplog.set_level(logging.WARNING, logger="finetune_core.store")
            await cluster.job_succeeded(bench["metadata"]["name"])
            # The copy has begun: the store goes down under it.
            await cluster.wait_for(lambda: copied_shards(BUCKET) > 0, "the copy to begin", 30)
            caplog.clear()
            await asyncio.to_thread(s3_server.stop)
            at_stop = copied_shards(BUCKET)
            assert 0 < at_stop < ADAPTER_SHARDS, "the outage did not fall in the copy"
            await cluster.wait_for(
                lambda: any("store:" in r.getMessage() for r in caplog.records),
                "the operator to hit the outage",
            )
            watch.check()
            assert not watch.violations
            assert cluster.status("outage")["phase"] == "Benchmarking"

            await asyncio.to_thread(s3_server.start)
            status = await cluster.wait_for(
                lambda: (s := cluster.status("outage")).get("phase") == "Promoted" and s,
                "the promotion to complete",
                60,
            )
            watch.check()
        assert watch.violations == []
        assert watch.checks > 1
        promoted = status["promotedModel"].removeprefix(f"s3://{BUCKET}/")
        alias = json.loads(stored_value(BUCKET, f"{promoted.rsplit('/', 1)[0]}/current.json"))
        assert alias["uri"] == status["promotedModel"]
        copy = {
            k.removeprefix(f"{promoted}/adapter/")
            for k in stored_keys(BUCKET)
            if k.startswith(f"{promoted}/adapter/")
        }
        assert copy == adapter
    finally:
        await cluster.stop_operator()


def write_shards(store: S3Store, prefix: str) -> None:
    for index in range(ADAPTER_SHARDS):
        store.put_bytes(f"{prefix}/shard-{index:04d}.bin", b"w" * 64)
