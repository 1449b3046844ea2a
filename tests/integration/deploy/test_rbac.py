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
    # create, delete: a tournament's candidates are FineTuneJobs the operator makes
    *(
        ("finetune.dev", "finetunejobs", verb)
        for verb in ("get", "list", "watch", "patch", "create", "delete")
    ),
    *(("finetune.dev", "finetunejobs/status", verb) for verb in ("get", "patch")),
    *(("finetune.dev", "finetunetournaments", verb) for verb in ("get", "list", "watch", "patch")),
    *(("finetune.dev", "finetunetournaments/status", verb) for verb in ("get", "patch")),
    # blockOwnerDeletion on the children: admission may require update on the finalizers
    ("finetune.dev", "finetunejobs/finalizers", "update"),
    ("finetune.dev", "finetunetournaments/finalizers", "update"),
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
# Leader election, only in the operator's own namespace: the Lease named LEASE (create
# cannot be limited to a name).
LEASE = "finetune-operator"
LEADER_ELECTION_PERMISSIONS: set[Permission] = {
    ("coordination.k8s.io", "leases", "create"),
    ("coordination.k8s.io", f"leases/{LEASE}", "get"),
    ("coordination.k8s.io", f"leases/{LEASE}", "patch"),
}
LEADER_ELECTION_ROLE = "finetune-operator-leader-election"
ROLE_KINDS = ("Role", "ClusterRole")


def permissions(role: dict[str, Any]) -> set[Permission]:
    """(group, resource, verb); a rule limited to names gives `resource/name`."""
    granted = set()
    for rule in role["rules"]:
        assert set(rule) <= {"apiGroups", "resources", "verbs", "resourceNames"}, (
            f"unexpected rule fields: {rule}"
        )
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for name in rule.get("resourceNames") or [None]:
                    for verb in rule["verbs"]:
                        granted.add(
                            (group, resource if name is None else f"{resource}/{name}", verb)
                        )
    return granted


def leader_election_role(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The one Role for the Lease: in the operator's namespace, bound to its account."""
    role = one(objects, "Role", LEADER_ELECTION_ROLE)
    assert role["metadata"]["namespace"] == RELEASE_NAMESPACE
    binding = one(objects, "RoleBinding", LEADER_ELECTION_ROLE)
    assert binding["metadata"]["namespace"] == RELEASE_NAMESPACE
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": LEADER_ELECTION_ROLE,
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": RELEASE, "namespace": RELEASE_NAMESPACE}
    ]
    return role


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
                # delete: superseded Jobs, and a removed tournament candidate's FineTuneJob
                assert verb != "delete" or (group, resource) in (
                    ("batch", "jobs"),
                    ("finetune.dev", "finetunejobs"),
                )
                assert group != "coordination.k8s.io" or role["kind"] == "Role", (
                    f"{source}: Leases only in a namespaced Role"
                )


def test_cluster_scope_grants_exactly_what_the_operator_uses(
    sources: dict[str, list[dict[str, Any]]],
) -> None:
    for source in ("chart cluster", "manifests/rbac", "kustomize base"):
        objects = sources[source]
        (role,) = find(objects, "ClusterRole")
        assert [r["metadata"]["name"] for r in find(objects, "Role")] == [LEADER_ELECTION_ROLE]
        assert permissions(role) == NAMESPACED_PERMISSIONS | DISCOVERY_PERMISSIONS, source
        assert permissions(leader_election_role(objects)) == LEADER_ELECTION_PERMISSIONS, source
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
    assert permissions(leader_election_role(objects)) == LEADER_ELECTION_PERMISSIONS
    roles = [r for r in find(objects, "Role") if r["metadata"]["name"] != LEADER_ELECTION_ROLE]
    assert sorted(role["metadata"]["namespace"] for role in roles) == ["team-a", "team-b"]
    for role in roles:
        assert permissions(role) == NAMESPACED_PERMISSIONS
    (cluster_role,) = find(objects, "ClusterRole")
    assert permissions(cluster_role) == DISCOVERY_PERMISSIONS

    subject = {"kind": "ServiceAccount", "name": RELEASE, "namespace": RELEASE_NAMESPACE}
    bindings = [
        b for b in find(objects, "RoleBinding") if b["metadata"]["name"] != LEADER_ELECTION_ROLE
    ]
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


def test_the_lease_role_follows_the_leader_election_values() -> None:
    renamed = render_chart({"leaderElection": {"leaseName": "ft-leader"}})
    assert ("coordination.k8s.io", "leases/ft-leader", "patch") in permissions(
        one(renamed, "Role", LEADER_ELECTION_ROLE)
    )
    off = render_chart({"leaderElection": {"enabled": False}})
    assert not find(off, "Role") and not find(off, "RoleBinding")
