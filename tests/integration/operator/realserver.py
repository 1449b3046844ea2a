"""The operator's test cluster on the real kube-apiserver: the same moves as the emulator's
(harness.Cluster), read and written through the API instead of the emulator's memory.

The test still plays the Job controller (the control plane runs none): it patches a Job's
status through the /status subresource, as the real Job controller does, and the server
validates those patches as it would the controller's. Which Jobs the operator asked to
create comes from the API server's audit log, the server's own record of every request.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

from finetune_operator.builders import LABEL_JOB
from finetune_operator.settings import OperatorSettings
from tests.controlplane.server import REPO, ControlPlane, KubeClient, wait_until
from tests.integration.operator.harness import FTJ_URL, JOBS_URL, NAMESPACE, PODS_URL, Cluster

NAMESPACE_URL = f"/api/v1/namespaces/{NAMESPACE}"
EVENTS_URL = f"{NAMESPACE_URL}/events"
CHART = REPO / "charts" / "finetune-operator"


@dataclass
class RealCluster(Cluster):
    control_plane: ControlPlane | None = None
    client: KubeClient | None = None
    validates_schema = True

    @property
    def kube(self) -> KubeClient:
        assert self.client is not None
        return self.client

    # ---------------------------------------------------------------- reading

    def ftj(self, name: str) -> dict[str, Any]:
        obj = self.kube.get(f"{FTJ_URL}/{name}")
        if obj is None:
            raise KeyError(name)
        found: dict[str, Any] = obj
        return found

    def absent(self, name: str) -> bool:
        return self.kube.get(f"{FTJ_URL}/{name}") is None

    def job(self, name: str) -> dict[str, Any] | None:
        obj = self.kube.get(f"{JOBS_URL}/{name}")
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            return None
        found: dict[str, Any] = obj
        return found

    def jobs(self, owner: str) -> list[dict[str, Any]]:
        items = self.kube.items(JOBS_URL, labelSelector=f"{LABEL_JOB}={owner}")
        return sorted(
            (job for job in items if not job["metadata"].get("deletionTimestamp")),
            key=lambda job: job["metadata"]["name"],
        )

    def job_creations(self, owner: str) -> list[str]:
        """Every Job create the server received for this FineTuneJob (the object of that
        name now: its UID, so an earlier test's object of the same name does not count),
        refused ones included."""
        assert self.control_plane is not None
        uid = self.ftj(owner)["metadata"]["uid"]
        names = []
        for event in self.control_plane.audit():
            ref = event.get("objectRef") or {}
            if (
                event.get("verb") != "create"
                or event.get("stage") != "ResponseComplete"
                or ref.get("resource") != "jobs"
                or ref.get("subresource")
            ):
                continue
            meta = (event.get("requestObject") or {}).get("metadata") or {}
            if any(o.get("uid") == uid for o in meta.get("ownerReferences") or []):
                names.append(meta["name"])
        return names

    def events(self, name: str) -> list[dict[str, Any]]:
        return [
            event
            for event in self.kube.items(EVENTS_URL)
            if event.get("involvedObject", {}).get("name") == name
        ]

    # ---------------------------------------------------------------- writing

    async def _request(self, method: str, url: str, body: Any, content_type: str) -> Any:
        return await asyncio.to_thread(self.kube.call, method, url, body, content_type)


def prepare_namespace(client: KubeClient) -> None:
    """The namespace the suite uses, with the ServiceAccount pods need (the controller
    manager adds it too, but not before the first test may want a pod)."""
    client.create("/api/v1/namespaces", {"metadata": {"name": NAMESPACE}}, exist_ok=True)
    client.create(
        f"{NAMESPACE_URL}/serviceaccounts", {"metadata": {"name": "default"}}, exist_ok=True
    )


def empty_namespace(client: KubeClient) -> None:
    """Remove what a test left (the operator is stopped by then, so its finalizers are
    removed here), and wait until it is gone: the next test starts from nothing."""
    for ftj in client.items(FTJ_URL):
        name = ftj["metadata"]["name"]
        if ftj["metadata"].get("finalizers"):
            client.patch(f"{FTJ_URL}/{name}", {"metadata": {"finalizers": None}})
        client.delete(f"{FTJ_URL}/{name}")
    for url in (JOBS_URL, PODS_URL, EVENTS_URL):
        for obj in client.items(url):
            client.delete(f"{url}/{obj['metadata']['name']}", {"propagationPolicy": "Background"})
    for url in (FTJ_URL, JOBS_URL, PODS_URL):
        wait_until(partial(is_empty, client, url), f"an empty {url}")


def is_empty(client: KubeClient, url: str) -> bool:
    return not client.items(url)


def real_cluster(
    control_plane: ControlPlane, store: Any, dataset: str, settings: Any
) -> RealCluster:
    control_plane.install_crd()
    client = control_plane.admin()
    prepare_namespace(client)
    empty_namespace(client)
    return RealCluster(
        api=None,  # type: ignore[arg-type]  # the emulator: none here
        store=store,
        dataset=dataset,
        settings=settings,
        control_plane=control_plane,
        client=client,
    )


# ---------------------------------------------------------------- the operator's identity

OPERATOR_NAMESPACE = "finetune-system"
RBAC_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
# Long enough for any test session; the server caps what it grants.
TOKEN_SECONDS = 6 * 3600


def chart_rbac(release: str, values: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The ServiceAccount and RBAC objects `helm install RELEASE` creates with `values`."""
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(
            values=dict(values or {}), name=release, namespace=OPERATOR_NAMESPACE, is_install=True
        )
    return [
        doc
        for path, text in sorted(rendered.items())
        if path.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc and doc["kind"] in RBAC_KINDS
    ]


def service_account_kubeconfig(
    control_plane: ControlPlane, objects: list[dict[str, Any]], path: Path
) -> Path:
    """Apply `objects` (one ServiceAccount and its RBAC) and write a kubeconfig that
    authenticates as that ServiceAccount with a bound token and nothing else."""
    client = control_plane.admin()
    client.create("/api/v1/namespaces", {"metadata": {"name": OPERATOR_NAMESPACE}}, exist_ok=True)
    for obj in objects:
        if obj["kind"] == "Role":
            namespace = {"metadata": {"name": obj["metadata"]["namespace"]}}
            client.create("/api/v1/namespaces", namespace, exist_ok=True)
    listing = {"apiVersion": "v1", "kind": "List", "items": objects}
    control_plane.kubectl(
        "apply", "--server-side", "--force-conflicts", "-f", "-", stdin=json.dumps(listing)
    )
    (account,) = (obj for obj in objects if obj["kind"] == "ServiceAccount")
    name = account["metadata"]["name"]
    request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest"}
    request["spec"] = {"expirationSeconds": TOKEN_SECONDS}  # type: ignore[assignment]
    granted = client.create(
        f"/api/v1/namespaces/{OPERATOR_NAMESPACE}/serviceaccounts/{name}/token", request
    )
    user = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{name}"
    return control_plane.token_kubeconfig(path, granted["status"]["token"], user)


# The chart's RBAC for each way the operator is installed; the operator's settings follow.
SCOPES: dict[str, tuple[str, dict[str, Any]]] = {
    "cluster": ("rbac-cluster", {}),
    "namespaced": ("rbac-ns", {"rbac": {"scope": "namespaced"}, "watchNamespaces": [NAMESPACE]}),
}
_identities: dict[tuple[Path, str], Path] = {}


def operator_kubeconfig(control_plane: ControlPlane, scope: str) -> Path:
    """The kubeconfig of the chart's ServiceAccount for `scope`, made once a session."""
    key = (control_plane.directory, scope)
    if key not in _identities:
        release, values = SCOPES[scope]
        path = control_plane.directory / f"operator-{scope}.kubeconfig"
        _identities[key] = service_account_kubeconfig(
            control_plane, chart_rbac(release, values), path
        )
    return _identities[key]


def real_cluster_with_dataset(
    control_plane: ControlPlane, store: Any, s3_env: dict[str, str]
) -> RealCluster:
    """A RealCluster with the operator's test settings and a small dataset in the bucket,
    for tests that start the operator with a kubeconfig of their own."""
    settings = OperatorSettings(
        trainer_image="registry.test/finetune/trainer:test",
        store=s3_env["FINETUNE_STORE"],
        s3_endpoint=s3_env["FINETUNE_S3_ENDPOINT"],
        store_secret="store-credentials",
        progress_interval_seconds=0.2,
    )
    store.put_bytes("datasets/chat.jsonl", b'{"messages": [{"role": "user", "content": "hi"}]}\n')
    return real_cluster(control_plane, store, store.uri("datasets/chat.jsonl"), settings)
