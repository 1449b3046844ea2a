"""The operator against an API server that fails some of its requests: errors and stalls
delay a run but never duplicate a Job, lose one, or fail the run."""

from __future__ import annotations

import kmock

from finetune_operator.settings import OperatorSettings
from tests.integration.operator.emulator import Faults
from tests.integration.operator.harness import JOBS, Cluster
from tests.support.manifests import small_job


def job_posts(request: kmock.Request) -> bool:
    return request.method == "POST" and request.resource == JOBS


async def run_to_promoted(cluster: Cluster, name: str) -> None:
    await cluster.create(small_job(name, cluster.dataset))
    train = await cluster.wait_for_job(name, 1, "train")
    await cluster.job_running(train["metadata"]["name"])
    await cluster.wait_for_phase(name, "Training")
    await cluster.finish(name, train)


def created_jobs(cluster: Cluster) -> list[str]:
    return [job["metadata"]["name"] for job in cluster.api.created(JOBS)]


async def test_a_conflict_on_job_creation_is_retried_not_taken_for_an_existing_job(
    emulator_cluster: Cluster,
) -> None:
    """409 Conflict (not AlreadyExists) creates nothing: the operator must not record the
    Job as created, or the next pass finds it missing and fails the run (JobDeleted)."""
    cluster = emulator_cluster
    cluster.api.faults = Faults(1.0, seed=0, kinds=("409",), only=job_posts, limit=1)
    await run_to_promoted(cluster, "conflicted")
    assert cluster.api.faults.injected == {"409": 1}
    assert created_jobs(cluster) == ["conflicted-g1-train", "conflicted-g1-bench"]


async def test_a_stalled_job_creation_times_out_and_is_retried(
    emulator_cluster: Cluster, settings: OperatorSettings
) -> None:
    """A request that hangs (here: 60 s, longer than the test waits for anything) must
    time out on the operator's side; the retry creates the Job and the run goes on."""
    cluster = emulator_cluster
    cluster.settings = settings.model_copy(update={"api_timeout_seconds": 2.0})
    await cluster.restart_operator()
    cluster.api.faults = Faults(
        1.0, seed=0, kinds=("stall",), only=job_posts, limit=1, stall_seconds=60
    )
    await run_to_promoted(cluster, "stalled")
    assert cluster.api.faults.injected == {"stall": 1}
    assert created_jobs(cluster) == ["stalled-g1-train", "stalled-g1-bench"]


async def test_errors_on_every_kind_of_request_only_delay_the_run(
    emulator_cluster: Cluster,
) -> None:
    """A seeded 20 % of the operator's requests (watches, reads, patches, creates, the
    Lease) fail with 500, 429 or 409 or stall briefly; the run still ends Promoted with one
    Job per stage."""
    cluster = emulator_cluster
    cluster.api.faults = Faults(0.2, seed=7, stall_seconds=1.0)
    await run_to_promoted(cluster, "unlucky")
    assert cluster.api.faults.total > 0
    assert created_jobs(cluster) == ["unlucky-g1-train", "unlucky-g1-bench"]
