"""`finetune operator` as its pod runs it: a process configured by FINETUNE_* variables, with
a liveness probe, Prometheus metrics and JSON logs, stopped by SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import urllib.request
from pathlib import Path

from finetune_core.store import S3Store
from tests.conftest import TEST_CREDENTIALS
from tests.integration.operator.emulator import ApiServer
from tests.integration.operator.harness import TIMEOUT, Cluster
from tests.support.manifests import small_job


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def http_get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read().decode()


async def test_operator_process_probes_metrics_and_clean_stop(
    api: ApiServer, s3_store: S3Store, s3_env: dict[str, str], tmp_path: Path
) -> None:
    health, metrics = free_port(), free_port()
    env = {
        **os.environ,
        "FINETUNE_HEALTH_PORT": str(health),
        "FINETUNE_METRICS_PORT": str(metrics),
        "FINETUNE_LOG_FORMAT": "json",
        "FINETUNE_PROGRESS_INTERVAL": "0.2",
        "FINETUNE_TRAINER_IMAGE": "registry.test/finetune/trainer:test",
    }
    log = tmp_path / "operator.log"
    with log.open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "finetune_cli",
            "operator",
            env=env,
            stdout=output,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            s3_store.put_bytes("datasets/chat.jsonl", b"{}\n")
            cluster = Cluster(api, s3_store, s3_store.uri("datasets/chat.jsonl"))
            await cluster.create(small_job("proc", cluster.dataset))
            await cluster.wait_for_job("proc", 1, "train")
            await cluster.wait_for_phase("proc", "Pending")

            status, body = await asyncio.to_thread(http_get, f"http://127.0.0.1:{health}/healthz")
            # The only operator: it holds the Lease (a standby answers 200 with false).
            assert (status, json.loads(body)) == (200, {"leader": True})

            def scrape() -> str | None:
                text = http_get(f"http://127.0.0.1:{metrics}/metrics")[1]
                return text if 'finetune_jobs{phase="Pending"} 1.0' in text else None

            exposition = await cluster.wait_for(scrape, "the Pending job in the metrics")
            assert "finetune_runs_started_total 1.0" in exposition
            assert "finetune_runs_failed_total 0.0" in exposition
        finally:
            process.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(process.wait(), TIMEOUT)
    assert code == 0
    lines = log.read_text().splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert any("JobCreated" in record.get("message", "") for record in records)
    assert all(TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in line for line in lines)
