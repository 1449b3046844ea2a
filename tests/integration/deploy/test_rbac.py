"""Least privilege: the operator's permissions are exactly what it uses, with no wildcards,
in the chart (both scopes), the plain RBAC YAML and the Kustomize base."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.deploy.k8s import (
    RELEASE,
    RELEASE_NAMESPACE,
    REPO,
    documents,
    find,
    kustomize,
    one,
    render_chart,
)

Permission = tuple[str, str, str]  # (apiGroup, resource, verb)

# In every namespace where FineTuneJobs live.
NAMESPACED_PERMISSIONS: set[Permission] = {
    *(("finetune.dev", "finetunejobs", verb) for verb in ("get", "list", "watch", "patch")),
    *(("finetune.dev", "finetunejobs/status", verb) for verb in ("get", "patch")),
    # blockOwnerDeletion on the Jobs: admission may require update on the finalizers
    ("finetune.dev", "finetunejobs/finalizers", "update"),
    # delete: the unfinished Jobs of a generation superseded by a spec change
    *(("batch", "jobs", verb) for verb in ("get", "list", "watch", "create", "delete")),
    *(("", "pods", verb) for verb in ("get", "list", "watch")),
    *(("", "events", verb) for verb in ("create", "patch")),
    *(("events.k8s.io", "events", verb) for verb in ("create", "patch")),
}
# kopf's discovery, cluster-wide in both scopes.
DISCOVERY_PERMISSIONS: set[Permission] = {
    ("", "namespaces", "list"),
    ("", "namespaces", "watch"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
}
ROLE_KINDS = ("Role", "ClusterRole")


def permissions(role: dict[str, Any]) -> set[Permission]:
    granted = set()
    for rule in role["rules"]:
        assert set(rule) <= {"apiGroups", "resources", "verbs"}, f"unexpected rule fields: {rule}"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    granted.add((group, resource, verb))
    return granted


def plain_rbac() -> list[dict[str, Any]]:
    return [
        doc
        for path in sorted((REPO / "manifests" / "rbac").glob("*.yaml"))
        for doc in documents(path.read_text())
    ]


def all_role_sources() -> dict[str, list[dict[str, Any]]]:
    return {
        "chart cluster": render_chart(),
        "chart namespaced": render_chart(
            {"rbac": {"scope": "namespaced"}, "watchNamespaces": ["team-a", "team-b"]}
        ),
        "manifests/rbac": plain_rbac(),
        "kustomize base": kustomize(REPO / "manifests" / "kustomize" / "base"),
    }


@pytest.fixture(scope="module")
def sources() -> dict[str, list[dict[str, Any]]]:
    return all_role_sources()


def test_no_wildcards_and_no_secrets_anywhere(sources: dict[str, list[dict[str, Any]]]) -> None:
    for source, objects in sources.items():
        roles = [obj for kind in ROLE_KINDS for obj in find(objects, kind)]
        assert roles, f"{source}: no roles"
        for role in roles:
            for group, resource, verb in permissions(role):
                assert "*" not in (group, resource, verb), (
                    f"{source}: wildcard in {role['metadata']['name']}"
                )
                assert resource != "secrets", f"{source}: the operator must not read Secrets"
                assert verb not in {"deletecollection", "escalate", "bind", "impersonate"}
                assert verb != "delete" or (group, resource) == ("batch", "jobs")


def test_cluster_scope_grants_exactly_what_the_operator_uses(
    sources: dict[str, list[dict[str, Any]]],
) -> None:
    for source in ("chart cluster", "manifests/rbac", "kustomize base"):
        objects = sources[source]
        (role,) = find(objects, "ClusterRole")
        assert not find(objects, "Role")
        assert permissions(role) == NAMESPACED_PERMISSIONS | DISCOVERY_PERMISSIONS, source
        binding = one(objects, "ClusterRoleBinding")
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": role["metadata"]["name"],
        }
        account = one(objects, "ServiceAccount")
        assert binding["subjects"] == [
            {
                "kind": "ServiceAccount",
                "name": account["metadata"]["name"],
                "namespace": account["metadata"]["namespace"],
            }
        ], source


def test_namespaced_scope_grants_jobs_access_only_in_watched_namespaces(
    sources: dict[str, list[dict[str, Any]]],
) -> None:
    objects = sources["chart namespaced"]
    roles = find(objects, "Role")
    assert sorted(role["metadata"]["namespace"] for role in roles) == ["team-a", "team-b"]
    for role in roles:
        assert permissions(role) == NAMESPACED_PERMISSIONS
    (cluster_role,) = find(objects, "ClusterRole")
    assert permissions(cluster_role) == DISCOVERY_PERMISSIONS

    subject = {"kind": "ServiceAccount", "name": RELEASE, "namespace": RELEASE_NAMESPACE}
    bindings = find(objects, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for binding in bindings:
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["subjects"] == [subject]
    assert one(objects, "ClusterRoleBinding")["subjects"] == [subject]


def test_rbac_can_be_left_to_the_platform_team() -> None:
    objects = render_chart({"rbac": {"create": False}})
    assert not [
        obj
        for kind in (*ROLE_KINDS, "RoleBinding", "ClusterRoleBinding")
        for obj in find(objects, kind)
    ]
