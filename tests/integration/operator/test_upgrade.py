"""An operator upgraded from a version whose kopf handlers put a finalizer on every
FineTuneJob releases it, so deleting such an object does not hang."""

from __future__ import annotations

from typing import Any

from finetune_operator.handlers import FINALIZER
from tests.integration.operator.harness import Cluster
from tests.support.manifests import small_job


async def test_the_finalizer_of_an_earlier_version_is_released(cluster: Cluster) -> None:
    old: dict[str, Any] = small_job("inherited", cluster.dataset)
    old["metadata"]["finalizers"] = [FINALIZER, "example.com/keep"]
    await cluster.create(old)
    await cluster.wait_for(
        lambda: cluster.ftj("inherited")["metadata"].get("finalizers") == ["example.com/keep"],
        "the earlier version's finalizer released, another one kept",
    )
    await cluster.wait_for_phase("inherited", "Pending")  # and the run goes on
