"""The GitOps Kustomize tree, built by real Kustomize (kubectl's): the base is the chart's
default install as plain objects, the MI300X overlay changes only what it says."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from finetune_operator.settings import OperatorSettings
from tests.integration.deploy.k8s import (
    CRD_FILE,
    REPO,
    container_env,
    find,
    kustomize,
    one,
    operator_settings,
    render_chart,
    schema_problems,
)

KUSTOMIZE = REPO / "manifests" / "kustomize"
BASE = KUSTOMIZE / "base"
OVERLAY = KUSTOMIZE / "overlays" / "mi300x"
NAMESPACE = "finetune-system"


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return kustomize(BASE)


@pytest.fixture(scope="module")
def overlay() -> list[dict[str, Any]]:
    return kustomize(OVERLAY)


def test_base_holds_the_whole_install_and_validates(base: list[dict[str, Any]]) -> None:
    assert sorted(obj["kind"] for obj in base) == [
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "CustomResourceDefinition",
        "Deployment",
        "Namespace",
        "Role",
        "RoleBinding",
        "ServiceAccount",
    ]
    assert schema_problems(base) == []
    crds = {obj["metadata"]["name"]: obj for obj in find(base, "CustomResourceDefinition")}
    assert set(crds) == {"finetunejobs.finetune.dev", "finetunetournaments.finetune.dev"}
    for name, crd in crds.items():
        assert crd["spec"] == yaml.safe_load((CRD_FILE.parent / f"{name}.yaml").read_text())["spec"]
    for kind in ("Deployment", "ServiceAccount"):
        assert one(base, kind)["metadata"]["namespace"] == NAMESPACE
    assert one(base, "Namespace")["metadata"]["name"] == NAMESPACE
    (subject,) = one(base, "ClusterRoleBinding")["subjects"]
    assert subject["namespace"] == NAMESPACE


def test_base_deployment_matches_the_chart_defaults(base: list[dict[str, Any]]) -> None:
    """Same pod as `helm install` with default values, labels aside."""
    chart_deployment = one(render_chart(), "Deployment")
    base_deployment = one(base, "Deployment")
    assert (
        base_deployment["spec"]["template"]["spec"] == chart_deployment["spec"]["template"]["spec"]
    )
    assert operator_settings(base_deployment) == operator_settings(chart_deployment)


def test_overlay_changes_only_its_settings_and_validates(
    base: list[dict[str, Any]], overlay: list[dict[str, Any]]
) -> None:
    assert schema_problems(overlay) == []
    assert sorted(obj["kind"] for obj in overlay) == sorted(obj["kind"] for obj in base)

    settings = operator_settings(one(overlay, "Deployment"))
    defaults = operator_settings(one(base, "Deployment"))
    changed = {
        field
        for field in OperatorSettings.model_fields
        if getattr(settings, field) != getattr(defaults, field)
    }
    assert changed == {
        "trainer_image",
        "image_pull_secrets",
        "store",
        "s3_endpoint",
        "supplemental_groups",
        "shm_size",
        "backoff_limit",
        "log_format",
    }
    assert settings.s3_endpoint == "http://minio.minio.svc.cluster.local:9000"
    assert settings.supplemental_groups == [44, 992]
    assert settings.trainer_image.startswith("registry.example.com/")
    assert settings.image_pull_secrets == ["registry-example-com"]

    (container,) = one(overlay, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.example.com/ml-platform/finetune-operator:0.1.0"
    # Credentials stay references to the Secret after the patch.
    env = container_env(one(overlay, "Deployment"))
    assert env["AWS_SECRET_ACCESS_KEY"] == {
        "secretKeyRef": {"name": "finetune-store", "key": "AWS_SECRET_ACCESS_KEY"}
    }


def test_overlay_patches_target_objects_of_the_base(base: list[dict[str, Any]]) -> None:
    kustomization = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())
    for patch in kustomization["patches"]:
        target = yaml.safe_load((OVERLAY / patch["path"]).read_text())
        matches = find(base, target["kind"], target["metadata"]["name"])
        assert [m["metadata"].get("namespace") for m in matches] == [
            target["metadata"].get("namespace")
        ], patch["path"]
    images = {image["name"] for image in kustomization["images"]}
    used = {
        container["image"].rsplit(":", 1)[0]
        for container in one(base, "Deployment")["spec"]["template"]["spec"]["containers"]
    }
    assert images <= used
