"""The install paths meet the real API server: `helm install` of the chart (Helm's Go SDK)
with the default and the MI300X values, `helm uninstall`, the Kustomize base and overlays
and the GitOps examples applied server-side with --dry-run=server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from tests.controlplane.server import CRD_NAME, REPO, ControlPlane

CHART = REPO / "charts" / "finetune-operator"
KUSTOMIZE = REPO / "manifests" / "kustomize"
GITOPS = REPO / "manifests" / "gitops"
OVERLAYS = [KUSTOMIZE / "base", *sorted((KUSTOMIZE / "overlays").iterdir())]


def values_file(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CHART / name).read_text())
    return loaded


INSTALLS = {"defaults": None, "mi300x": "values-mi300x.yaml"}
CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": CRD_NAME},
}


def install_service_monitor_crd(plane: ControlPlane) -> None:
    """The MI300X values turn on a ServiceMonitor, a kind of the Prometheus Operator: on a
    cluster without its CRD `helm install` fails ("no matches for kind ServiceMonitor").
    A stand-in CRD (the kind's name, any content) is what the install needs here."""
    stand_in = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
        "spec": {
            "group": "monitoring.coreos.com",
            "names": {"kind": "ServiceMonitor", "plural": "servicemonitors"},
            "scope": "Namespaced",
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }
    plane.kubectl("apply", "--server-side", "-f", "-", stdin=json.dumps(stand_in))
    plane.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/servicemonitors.monitoring.coreos.com",
    )


def exists(plane: ControlPlane, obj: dict[str, Any]) -> bool:
    meta = obj["metadata"]
    args = ["get", f"{obj['kind']}.{obj['apiVersion'].split('/')[0]}", meta["name"]]
    if "/" not in obj["apiVersion"]:  # the core group
        args[1] = obj["kind"]
    if meta.get("namespace"):
        args += ["-n", meta["namespace"]]
    result = plane.kubectl(*args, "--ignore-not-found", "-o", "name", check=False)
    assert result.returncode == 0, result.stderr
    return bool(result.stdout.strip())


@pytest.mark.parametrize("install", list(INSTALLS))
def test_helm_install_and_uninstall(control_plane: ControlPlane, install: str) -> None:
    file = INSTALLS[install]
    values = values_file(file) if file else None
    release = f"ft-{install}"
    namespace = f"helm-{install}"
    if (values or {}).get("metrics", {}).get("serviceMonitor", {}).get("enabled"):
        install_service_monitor_crd(control_plane)
    # The namespaces a namespaced install watches hold its Roles: they must exist first.
    for watched in (values or {}).get("watchNamespaces") or []:
        control_plane.admin().create(
            "/api/v1/namespaces", {"metadata": {"name": watched}}, exist_ok=True
        )
    # Helm keeps the release record in the namespace the configuration names.
    with helm.Config(kubeconfig_path=control_plane.kubeconfig, namespace=namespace) as config:
        installed = config.install(
            CHART, release, values, namespace=namespace, create_namespace=True, timeout=120
        )
        assert installed["status"] == "deployed", installed
        objects = check_installed(control_plane, installed["manifest"], namespace, release, install)
        config.uninstall(release, timeout=120)
    left = [f"{o['kind']}/{o['metadata']['name']}" for o in objects if exists(control_plane, o)]
    assert left == [], f"left on the server after uninstall: {left}"
    # Helm never deletes a CRD it installed from crds/: FineTuneJobs outlive the release.
    assert exists(control_plane, CRD)


def check_installed(
    control_plane: ControlPlane, manifest: str, namespace: str, release: str, install: str
) -> list[dict[str, Any]]:
    """Every object of the release is on the server; returns them."""
    objects = [doc for doc in yaml.safe_load_all(manifest) if doc]
    for obj in objects:  # Helm's manifest omits the namespace of namespaced objects
        if obj["kind"] not in {"ClusterRole", "ClusterRoleBinding", "Namespace"}:
            obj["metadata"].setdefault("namespace", namespace)
    kinds = sorted(obj["kind"] for obj in objects)
    assert {"Deployment", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"} <= set(kinds)
    if install == "mi300x":  # a Role and RoleBinding per watched namespace, one for the Lease
        assert kinds.count("Role") == kinds.count("RoleBinding") == 3
    missing = [
        f"{o['kind']}/{o['metadata']['name']}" for o in objects if not exists(control_plane, o)
    ]
    assert missing == [], f"not on the server after install: {missing}"
    assert exists(control_plane, CRD)
    deployment = json.loads(
        control_plane.kubectl(
            "get",
            "deployment",
            "-n",
            namespace,
            "-l",
            f"app.kubernetes.io/instance={release}",
            "-o",
            "json",
        ).stdout
    )["items"]
    assert len(deployment) == 1
    if install == "mi300x":
        env = {
            e["name"]: e.get("value")
            for e in deployment[0]["spec"]["template"]["spec"]["containers"][0]["env"]
        }
        assert "MI300X" in json.dumps(env), env

    return objects


@pytest.mark.parametrize("directory", OVERLAYS, ids=[d.name for d in OVERLAYS])
def test_kustomize_applies_server_side(control_plane: ControlPlane, directory: Path) -> None:
    # A dry run creates nothing, so the namespace the objects go to must exist already.
    control_plane.admin().create(
        "/api/v1/namespaces", {"metadata": {"name": "finetune-system"}}, exist_ok=True
    )
    result = control_plane.kubectl(
        "apply",
        "--server-side",
        "--dry-run=server",
        "--field-manager=kustomize-check",
        "-k",
        str(directory),
    )
    applied = [line for line in result.stdout.splitlines() if line.strip()]
    assert any("deployment.apps/" in line for line in applied), result.stdout
    assert any("customresourcedefinition" in line for line in applied), result.stdout
    assert all("serverside-applied (server dry run)" in line for line in applied), result.stdout


def served_groups(plane: ControlPlane) -> set[str]:
    versions = plane.kubectl("api-versions").stdout.split()
    return {version.rsplit("/", 1)[0] if "/" in version else "" for version in versions}


def test_gitops_examples_dry_run_where_their_crds_are_not_needed(
    control_plane: ControlPlane,
) -> None:
    groups = served_groups(control_plane)
    checked, foreign = [], []
    for path in sorted(GITOPS.rglob("*.yaml")):
        for doc in (d for d in yaml.safe_load_all(path.read_text()) if d):
            group = doc["apiVersion"].rsplit("/", 1)[0] if "/" in doc["apiVersion"] else ""
            if group not in groups:
                foreign.append(f"{doc['kind']} ({doc['apiVersion']})")
                continue
            namespace = doc["metadata"].get("namespace")
            if namespace:
                control_plane.admin().create(
                    "/api/v1/namespaces", {"metadata": {"name": namespace}}, exist_ok=True
                )
            control_plane.kubectl(
                "apply",
                "--server-side",
                "--dry-run=server",
                "-f",
                "-",
                stdin=json.dumps(doc),
            )
            checked.append(f"{path.name}:{doc['kind']}/{doc['metadata']['name']}")
    assert "argocd-cm.yaml:ConfigMap/argocd-cm" in checked
    # Argo CD's Application and Flux's GitRepository/Kustomization need those projects' CRDs.
    assert {f.split(" ")[0] for f in foreign} == {"Application", "GitRepository", "Kustomization"}
