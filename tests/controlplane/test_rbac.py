"""RBAC under the real authorizer. The lifecycle suite (tests/integration/operator, backends
apiserver and apiserver-namespaced) runs the operator as the chart's ServiceAccount and
passes with exactly the chart's permissions; this is the negative control: without one verb
the chart grants, the operator fails, and says so."""

from __future__ import annotations

import logging

import pytest

from finetune_core.store import S3Store
from tests.controlplane.server import ControlPlane
from tests.integration.operator.realserver import (
    OPERATOR_NAMESPACE,
    chart_rbac,
    real_cluster_with_dataset,
    service_account_kubeconfig,
)
from tests.support.manifests import small_job


def without_job_create(objects: list[dict[str, object]]) -> list[dict[str, object]]:
    """The chart's cluster-scoped RBAC minus `create` on batch/jobs."""
    removed = 0
    for obj in objects:
        if obj["kind"] != "ClusterRole":
            continue
        for rule in obj["rules"]:  # type: ignore[attr-defined]
            if "batch" in rule["apiGroups"] and "jobs" in rule["resources"]:
                rule["verbs"] = [verb for verb in rule["verbs"] if verb != "create"]
                removed += 1
    assert removed == 1, "the chart's ClusterRole no longer has one rule for batch/jobs"
    return objects


async def test_without_create_on_jobs_the_operator_fails_with_forbidden(
    control_plane: ControlPlane,
    s3_store: S3Store,
    s3_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    objects = without_job_create(chart_rbac("rbac-broken"))
    kubeconfig = service_account_kubeconfig(
        control_plane, objects, control_plane.directory / "operator-broken.kubeconfig"
    )
    cluster = real_cluster_with_dataset(control_plane, s3_store, s3_env)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    user = f"system:serviceaccount:{OPERATOR_NAMESPACE}:rbac-broken-finetune-operator"

    def refused() -> list[dict[str, object]]:
        return [
            event
            for event in control_plane.audit()
            if event.get("verb") == "create"
            and (event.get("objectRef") or {}).get("resource") == "jobs"
            and (event.get("user") or {}).get("username") == user
            and (event.get("responseStatus") or {}).get("code") == 403
        ]

    cluster.start_operator()
    try:
        await cluster.create(small_job("denied", cluster.dataset))
        # The server refused the Job (its own record) ...
        await cluster.wait_for(refused, "a refused Job create in the audit log")
        # ... and the operator surfaced it where a person looks: status or log.
        await cluster.wait_for(
            lambda: (
                "forbidden" in str(cluster.status("denied")).lower()
                or "forbidden" in caplog.text.lower()
            ),
            "Forbidden in the FineTuneJob's status or the operator's log",
        )
        assert cluster.jobs("denied") == []
        assert cluster.status("denied").get("phase") not in {"Training", "Promoted"}
    finally:
        await cluster.stop_operator()
