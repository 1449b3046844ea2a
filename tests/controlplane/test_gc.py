"""Garbage collection on the real control plane (its kube-controller-manager runs the
garbage collector): the operator's Jobs carry an ownerReference to their FineTuneJob, so
deleting the FineTuneJob deletes its Jobs."""

from __future__ import annotations

import pytest

from finetune_core.store import S3Store
from tests.controlplane.server import ControlPlane
from tests.integration.operator.harness import FTJ_URL
from tests.integration.operator.realserver import real_cluster_with_dataset
from tests.support.manifests import small_job


async def test_deleting_a_finetunejob_deletes_its_jobs(
    control_plane: ControlPlane,
    s3_store: S3Store,
    s3_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cluster = real_cluster_with_dataset(control_plane, s3_store, s3_env)
    monkeypatch.setenv("KUBECONFIG", str(control_plane.kubeconfig))
    cluster.start_operator()
    try:
        await cluster.create(small_job("collected", cluster.dataset))
        train = await cluster.wait_for_job("collected", 1, "train")
        (owner,) = train["metadata"]["ownerReferences"]
        assert owner["uid"] == cluster.ftj("collected")["metadata"]["uid"]

        await cluster._request("DELETE", f"{FTJ_URL}/collected", None, "application/json")
        await cluster.wait_for(
            lambda: cluster.kube.get(f"{FTJ_URL}/collected") is None,
            "the FineTuneJob gone (the operator released its finalizer)",
        )
        await cluster.wait_for(
            lambda: (
                cluster.kube.get(f"/apis/batch/v1/namespaces/ml/jobs/{train['metadata']['name']}")
                is None
            ),
            "its Job deleted by the garbage collector",
            timeout=60,
        )
    finally:
        await cluster.stop_operator()
