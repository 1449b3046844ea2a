"""The FineTuneJob API on the real kube-apiserver: the CRD is accepted (structural schema,
defaults, CEL rules, list-map keys), kubectl prints and explains it, every example is
accepted, and what the schema can express is rejected by the server itself, naming the same
field that `finetune validate` names."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.controlplane.server import CRD_NAME, REPO, ControlPlane
from tests.support.cli import finetune

EXAMPLES = sorted((REPO / "manifests" / "examples").glob("*.yaml"))
NAMESPACE = "api-tests"


@pytest.fixture(scope="module")
def plane(control_plane: ControlPlane) -> ControlPlane:
    control_plane.install_crd()
    control_plane.admin().create(
        "/api/v1/namespaces", {"metadata": {"name": NAMESPACE}}, exist_ok=True
    )
    return control_plane


def load(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


def quickstart() -> dict[str, Any]:
    return load(REPO / "manifests" / "examples" / "quickstart.yaml")


def dry_run(plane: ControlPlane, obj: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """`kubectl create --dry-run=server --validate=strict`: the server validates, defaults
    and admits the object, and stores nothing."""
    return plane.kubectl(
        "create",
        "-n",
        NAMESPACE,
        "--dry-run=server",
        "--validate=strict",
        "-o",
        "json",
        "-f",
        "-",
        stdin=json.dumps(obj),
        check=False,
    )


def test_crd_is_accepted_and_established(plane: ControlPlane) -> None:
    crd = json.loads(plane.kubectl("get", f"crd/{CRD_NAME}", "-o", "json").stdout)
    conditions = {c["type"]: c for c in crd["status"]["conditions"]}
    assert conditions["Established"]["status"] == "True"
    assert conditions["NamesAccepted"]["status"] == "True"
    # A non-structural schema would be served but flagged by this condition.
    assert "NonStructuralSchema" not in conditions
    assert crd["status"]["acceptedNames"]["shortNames"] == ["ftj"]
    resources = plane.kubectl("api-resources", "--api-group=finetune.dev", "-o", "wide").stdout
    assert "ftj" in resources and "FineTuneJob" in resources


def test_server_fills_the_schema_defaults(plane: ControlPlane) -> None:
    result = dry_run(plane, quickstart())
    assert result.returncode == 0, result.stderr
    spec = json.loads(result.stdout)["spec"]
    assert spec["dataset"]["validationSplit"] == 0.1
    assert spec["dataset"]["tooLong"] == "truncate"
    assert spec["training"]["precision"] == "bf16"
    assert spec["training"]["seed"] == 3407
    assert spec["benchmark"]["percentile"] == 95
    assert spec["training"]["maxSteps"] == 20  # given values stay


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_is_accepted(plane: ControlPlane, path: Path) -> None:
    obj = load(path)
    obj["metadata"].pop("namespace", None)
    result = dry_run(plane, obj)
    assert result.returncode == 0, f"{path.name}: {result.stderr}"
    spec = json.loads(result.stdout)["spec"]
    if obj["kind"] == "FineTuneTournament":
        # Nothing in a candidate is defaulted: it would override the template.
        assert spec["candidates"] == obj["spec"]["candidates"]
        assert spec["template"] == obj["spec"]["template"]
    else:
        assert spec["model"] == obj["spec"]["model"]


def with_spec(change: dict[str, Any]) -> dict[str, Any]:
    obj = quickstart()
    for section, values in change.items():
        if values is None:
            obj["spec"].pop(section)
        else:
            obj["spec"][section] = {**obj["spec"].get(section, {}), **values}
    return obj


def without_model() -> dict[str, Any]:
    obj = quickstart()
    obj["spec"]["model"] = {"maxSeqLength": 512}
    return obj


def too_long_name() -> dict[str, Any]:
    obj = quickstart()
    obj["metadata"]["name"] = "n" * 50
    return obj


def duplicate_profiles() -> dict[str, Any]:
    obj = quickstart()
    obj["spec"]["benchmark"]["sla"].append(copy.deepcopy(obj["spec"]["benchmark"]["sla"][0]))
    return obj


# (manifest, the field both the server and `finetune validate` must name, the server's word)
INVALID = {
    "rank-zero": (with_spec({"lora": {"r": 0}}), "spec.lora.r", "greater than or equal to 1"),
    "unknown-field": (with_spec({"lora": {"rank": 8}}), "spec.lora.rank", "unknown field"),
    "bad-enum": (
        with_spec({"training": {"precision": "fp8"}}),
        "spec.training.precision",
        "Unsupported value",
    ),
    "bad-percentile": (
        with_spec({"benchmark": {"percentile": 42}}),
        "spec.benchmark.percentile",
        "Unsupported value",
    ),
    "no-dataset": (with_spec({"dataset": None}), "spec.dataset", "Required value"),
    "no-model-named": (  # a CEL rule
        without_model(),
        "spec.model",
        "set model.preset or model.name",
    ),
    "name-too-long": (  # a CEL rule on metadata.name
        too_long_name(),
        "metadata.name",
        "at most 49 characters",
    ),
    "duplicate-profile": (  # a list-map key
        duplicate_profiles(),
        "spec.benchmark.sla",
        "Duplicate value",
    ),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_manifest_is_rejected_by_the_server_and_by_validate(
    plane: ControlPlane, case: str, tmp_path: Path
) -> None:
    obj, field, word = INVALID[case]
    result = dry_run(plane, obj)
    assert result.returncode != 0, f"{case}: the server accepted it"
    assert field in result.stderr and word in result.stderr, result.stderr

    path = tmp_path / f"{case}.yaml"
    path.write_text(yaml.safe_dump(obj))
    validate = finetune("validate", str(path), timeout=60)
    assert validate.returncode == 1, validate.stdout
    assert field in validate.stdout


def test_kubectl_get_prints_the_columns(plane: ControlPlane) -> None:
    client = plane.admin()
    obj = quickstart()
    obj["metadata"]["name"] = "columns"
    url = f"/apis/finetune.dev/v1alpha1/namespaces/{NAMESPACE}/finetunejobs"
    client.create(url, obj)
    client.patch(
        f"{url}/columns/status",
        {
            "status": {
                "phase": "Training",
                "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
                "progress": {"percent": 40, "loss": 1.25},
                "sla": "Passed",
            }
        },
    )
    table = plane.kubectl("get", "ftj", "-n", NAMESPACE, "columns").stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "MODEL", "PROGRESS", "LOSS", "SLA", "GPU-H", "AGE"]
    row = table[1].split()
    assert row[:6] == [
        "columns",
        "Training",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "40",
        "1.25",
        "Passed",
    ]
    client.delete(f"{url}/columns")


def test_kubectl_explain_prints_the_field_descriptions(plane: ControlPlane) -> None:
    explained = plane.kubectl("explain", "finetunejob.spec.lora").stdout
    assert "LoRA settings." in explained
    for field in ("r", "alpha", "dropout", "targetModules"):
        assert f"  {field}\t" in explained or f"  {field} " in explained, explained
    assert "Rank of the adapter, 1..1024." in explained


def test_a_tournament_and_its_leaderboard_are_stored_and_printed(plane: ControlPlane) -> None:
    client = plane.admin()
    obj = load(REPO / "manifests" / "examples" / "quickstart-tournament.yaml")
    url = f"/apis/finetune.dev/v1alpha1/namespaces/{NAMESPACE}/finetunetournaments"
    client.create(url, obj)
    name = obj["metadata"]["name"]
    status = {
        "phase": "Running",
        "observedGeneration": 1,
        "leader": "eager",
        "done": "1/2",
        "leaderboard": [
            {
                "name": "eager",
                "phase": "Passed",
                "evalLoss": 1.2,
                "latency": [{"name": "question", "seconds": 2.5, "limit": 10, "passed": True}],
                "slaPassed": True,
                "rank": 1,
            },
            {"name": "timid", "phase": "Training"},
        ],
    }
    client.patch(f"{url}/{name}/status", {"status": status})
    stored = json.loads(plane.kubectl("get", "ftt", "-n", NAMESPACE, name, "-o", "json").stdout)
    assert stored["status"]["leaderboard"] == status["leaderboard"]  # nothing pruned
    table = plane.kubectl("get", "ftt", "-n", NAMESPACE, name).stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "LEADER", "DONE", "AGE"]
    assert table[1].split()[:4] == [name, "Running", "eager", "1/2"]
    duplicate = copy.deepcopy(obj)
    duplicate["metadata"]["name"] = "twice"
    duplicate["spec"]["candidates"][1]["name"] = "eager"
    refused = dry_run(plane, duplicate)
    assert refused.returncode != 0 and "Duplicate value" in refused.stderr, refused.stderr
    client.delete(f"{url}/{name}")
