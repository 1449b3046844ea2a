"""Install the chart into a real cluster and run the smollm2 quickstart on CPU nodes."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

NAMESPACE = f"ft-e2e-{uuid.uuid4().hex[:6]}"


def _run(*argv: str, stdin: str | None = None) -> str:
    env = {**os.environ, "KUBECONFIG": os.environ["FINETUNE_E2E_KUBECONFIG"]}
    done = subprocess.run(argv, input=stdin, env=env, check=True, capture_output=True, text=True)
    return done.stdout


def _image(variable: str) -> tuple[str, str]:
    repository, _, tag = os.environ[variable].rpartition(":")
    return repository, tag


@pytest.fixture(scope="module")
def installed() -> Iterator[None]:
    operator_repo, operator_tag = _image("FINETUNE_E2E_OPERATOR_IMAGE")
    trainer_repo, trainer_tag = _image("FINETUNE_E2E_TRAINER_IMAGE")
    _run("kubectl", "create", "namespace", NAMESPACE)
    _run(
        "kubectl",
        "-n",
        NAMESPACE,
        "create",
        "secret",
        "generic",
        "finetune-store",
        f"--from-literal=AWS_ACCESS_KEY_ID={os.environ['AWS_ACCESS_KEY_ID']}",
        f"--from-literal=AWS_SECRET_ACCESS_KEY={os.environ['AWS_SECRET_ACCESS_KEY']}",
    )
    _run(
        "helm",
        "install",
        NAMESPACE,
        str(REPO / "charts" / "finetune-operator"),
        "-n",
        NAMESPACE,
        "--wait",
        "--set",
        f"image.repository={operator_repo}",
        "--set",
        f"image.tag={operator_tag}",
        "--set",
        f"trainer.image.repository={trainer_repo}",
        "--set",
        f"trainer.image.tag={trainer_tag}",
        "--set",
        f"store.uri={os.environ['FINETUNE_E2E_STORE']}",
        "--set",
        f"store.endpoint={os.environ['FINETUNE_E2E_S3_ENDPOINT']}",
        "--set",
        "store.existingSecret=finetune-store",
    )
    try:
        yield
    finally:
        _run("helm", "uninstall", NAMESPACE, "-n", NAMESPACE)
        _run("kubectl", "delete", "namespace", NAMESPACE, "--wait=false")


def _status(name: str) -> dict:
    out = _run("kubectl", "-n", NAMESPACE, "get", "ftj", name, "-o", "json")
    return json.loads(out).get("status") or {}


def test_quickstart_is_promoted_on_cpu_nodes(installed: None) -> None:
    manifest = yaml.safe_load((REPO / "manifests/examples/quickstart.yaml").read_text())
    manifest["metadata"]["namespace"] = NAMESPACE
    manifest["spec"]["dataset"]["uri"] = os.environ["FINETUNE_E2E_DATASET_URI"]
    _run("kubectl", "apply", "-f", "-", stdin=yaml.safe_dump(manifest))
    name = manifest["metadata"]["name"]
    deadline = time.monotonic() + float(os.environ.get("FINETUNE_E2E_TIMEOUT", "1800"))
    status: dict = {}
    while time.monotonic() < deadline:
        status = _status(name)
        if status.get("phase") in {"Promoted", "Rejected", "Failed"}:
            break
        time.sleep(10)
    assert status.get("phase") == "Promoted", status
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    jobs = _run(
        "kubectl", "-n", NAMESPACE, "get", "jobs", "-l", f"finetune.dev/job={name}", "-o", "name"
    ).split()
    assert sorted(Path(j).name for j in jobs) == [f"{name}-g1-bench", f"{name}-g1-train"]
