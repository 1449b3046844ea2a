"""Runs that cannot succeed end Failed, with the reason a person needs, and no stray Jobs."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import TEST_CREDENTIALS
from tests.integration.operator.harness import Cluster
from tests.support.manifests import small_job


async def failed(cluster: Cluster, name: str) -> dict[str, Any]:
    """The Stalled condition, once the run ended Failed."""
    await cluster.wait_for_phase(name, "Failed")
    return cluster.condition(name, "Stalled")


async def test_invalid_spec_fails_naming_the_field_and_creates_no_job(cluster: Cluster) -> None:
    bad = small_job("typo", cluster.dataset, lora={"r": 0}, training={"learningRate": -1})
    if cluster.validates_schema:  # the server refuses it, naming the same fields
        with pytest.raises(AssertionError, match="422") as refused:
            await cluster.create(bad)
        assert "spec.lora.r" in str(refused.value)
        assert "spec.training.learningRate" in str(refused.value)
        return
    await cluster.create(bad)

    status = await cluster.wait_for_phase("typo", "Failed")
    stalled = cluster.condition("typo", "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "InvalidSpec")
    assert "spec.lora.r: must be >= 1" in stalled["message"]
    assert "spec.training.learningRate: must be > 0" in stalled["message"]
    assert status["message"] == stalled["message"]
    assert cluster.condition("typo", "Ready")["status"] == "False"
    await cluster.wait_for(
        lambda: "InvalidSpec" in cluster.event_reasons("typo"), "an InvalidSpec Event"
    )
    assert cluster.jobs("typo") == []
    assert list(cluster.store.list("runs/")) == []


async def test_relative_dataset_path_is_invalid_in_a_cluster(cluster: Cluster) -> None:
    await cluster.create(small_job("local-path", "datasets/devassist.jsonl"))
    await cluster.wait_for_phase("local-path", "Failed")
    assert cluster.condition("local-path", "Stalled")["message"].startswith(
        "invalid spec: spec.dataset.uri: must be an s3:// or file:// URI"
    )
    assert cluster.jobs("local-path") == []


async def test_missing_dataset_fails_before_any_job(cluster: Cluster) -> None:
    missing = cluster.store.uri("datasets/nowhere.jsonl")
    await cluster.create(small_job("no-data", missing))
    await cluster.wait_for_phase("no-data", "Failed")
    stalled = cluster.condition("no-data", "Stalled")
    assert stalled["reason"] == "DatasetNotFound"
    assert missing in stalled["message"]
    assert cluster.jobs("no-data") == []


async def test_failed_training_reports_the_message_of_error_json(cluster: Cluster) -> None:
    await cluster.create(small_job("broken", cluster.dataset))
    train = await cluster.wait_for_job("broken", 1, "train")
    secret = TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]
    cluster.pod_failed(
        cluster.run("broken"),
        "validate",
        "InvalidDataset",
        f"line 3: 'messages' is missing (store key {secret})",
    )
    await cluster.job_failed(
        train["metadata"]["name"], "PodFailurePolicy", "Container trainer exited with code 3"
    )

    status = await cluster.wait_for_phase("broken", "Failed")
    stalled = cluster.condition("broken", "Stalled")
    assert stalled["reason"] == "InvalidDataset"
    assert stalled["message"] == "train failed: line 3: 'messages' is missing (store key ***)"
    assert secret not in str(status)
    await cluster.wait_for(
        lambda: "InvalidDataset" in cluster.event_reasons("broken"), "an InvalidDataset Event"
    )
    assert all(secret not in event["message"] for event in cluster.events("broken"))
    assert [job["metadata"]["name"] for job in cluster.jobs("broken")] == ["broken-g1-train"]


async def test_failed_training_without_error_json_reports_the_pod(cluster: Cluster) -> None:
    await cluster.create(small_job("oom", cluster.dataset))
    train = await cluster.wait_for_job("oom", 1, "train")
    await cluster.failed_pod("oom", 1, "train", "RuntimeError: CUDA out of memory")
    reason, why = "BackoffLimitExceeded", "Job has reached the specified backoff limit"
    await cluster.job_failed(train["metadata"]["name"], reason, why)
    stalled = await failed(cluster, "oom")
    assert (stalled["reason"], stalled["message"]) == (
        reason,
        "train failed: RuntimeError: CUDA out of memory",
    )


async def test_benchmark_past_its_deadline_fails_with_the_job_reason(cluster: Cluster) -> None:
    await cluster.create(small_job("late", cluster.dataset))
    run = cluster.run("late")
    train = await cluster.wait_for_job("late", 1, "train")
    cluster.pod_trained(run)
    # A training attempt that failed before the retry that succeeded: not the benchmark's.
    cluster.pod_failed(run, "train", "StoreUnavailable", "first attempt lost the store")
    await cluster.job_succeeded(train["metadata"]["name"])
    bench = await cluster.wait_for_job("late", 1, "benchmark")
    reason, why = "DeadlineExceeded", "Job was active longer than specified deadline"
    await cluster.job_failed(bench["metadata"]["name"], reason, why)
    stalled = await failed(cluster, "late")
    assert (stalled["reason"], stalled["message"]) == (reason, f"benchmark failed: {why}")


async def test_a_pod_that_cannot_pull_its_image_fails_the_run_and_its_job_goes(
    cluster: Cluster,
) -> None:
    """ImagePullBackOff past the operator's limit: Failed with the pod's reason and message,
    and the Job (which holds a GPU reservation) deleted, instead of Pending forever."""
    await cluster.create(small_job("no-image", cluster.dataset))
    train = await cluster.wait_for_job("no-image", 1, "train")
    await cluster.stop_operator()  # while the pod appears: no race with the limit below
    await cluster.waiting_pod(
        "no-image", 1, "train", "ImagePullBackOff", 'Back-off pulling image "registry.test/x"'
    )
    assert cluster.settings is not None
    cluster.settings.stuck_pod_seconds = 0.5
    cluster.start_operator()
    await cluster.wait_for_phase("no-image", "Failed")
    stalled = cluster.condition("no-image", "Stalled")
    assert stalled["reason"] == "ImagePullBackOff"
    assert "registry.test/x" in stalled["message"]
    await cluster.wait_for(lambda: cluster.job(train["metadata"]["name"]) is None, "Job deleted")
