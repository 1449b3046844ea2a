"""An operator restarted at any step resumes the run and never creates a second Job for it."""

from __future__ import annotations

from tests.integration.operator.harness import Cluster
from tests.support.manifests import small_job


def job_names(cluster: Cluster, owner: str) -> list[str]:
    return [job["metadata"]["name"] for job in cluster.jobs(owner)]


async def test_restarts_between_steps_keep_one_job_per_stage(cluster: Cluster) -> None:
    await cluster.create(small_job("durable", cluster.dataset))
    run = cluster.run("durable")
    train = await cluster.wait_for_job("durable", 1, "train")
    await cluster.wait_for_phase("durable", "Pending")

    await cluster.restart_operator()  # resumes a run whose Job exists
    await cluster.job_running(train["metadata"]["name"])
    await cluster.wait_for_phase("durable", "Training")

    await cluster.stop_operator()  # the training ends while no operator watches
    cluster.pod_trained(run)
    await cluster.job_succeeded(train["metadata"]["name"])
    cluster.start_operator()
    bench = await cluster.wait_for_job("durable", 1, "benchmark")
    await cluster.wait_for_phase("durable", "Benchmarking")

    await cluster.restart_operator()
    cluster.pod_benchmarked(run)
    await cluster.job_succeeded(bench["metadata"]["name"])
    await cluster.wait_for_phase("durable", "Promoted")

    await cluster.restart_operator()  # a settled run stays as it is
    await cluster.create(small_job("canary", cluster.dataset))
    await cluster.wait_for_phase("canary", "Pending")  # the operator is up and reconciling
    assert cluster.status("durable")["phase"] == "Promoted"
    assert job_names(cluster, "durable") == ["durable-g1-bench", "durable-g1-train"]
    # Not even an attempt at a second Job: each was asked for once.
    assert cluster.job_creations("durable") == ["durable-g1-train", "durable-g1-bench"]


async def test_restart_before_the_status_is_written_adopts_the_existing_job(
    cluster: Cluster,
) -> None:
    await cluster.create(small_job("adopted", cluster.dataset))
    await cluster.wait_for_job("adopted", 1, "train")
    await cluster.wait_for_phase("adopted", "Pending")
    await cluster.stop_operator()
    # As if the operator had died after creating the Job and before recording it.
    await cluster.patch_status("adopted", {"phase": "Validating"})

    cluster.start_operator()
    await cluster.wait_for_phase("adopted", "Pending")
    assert job_names(cluster, "adopted") == ["adopted-g1-train"]
