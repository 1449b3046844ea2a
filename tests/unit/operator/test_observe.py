"""Kubernetes objects in the lifecycle's terms: stuck pods, allowed tolerations."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from finetune_operator.controller import api_message, refused_for_good
from finetune_operator.observe import run_state, stuck
from finetune_operator.settings import OperatorSettings
from tests.support.manifests import finetunejob

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
LIMIT = 600.0
JOB = {"metadata": {"name": "agent-g1-train", "creationTimestamp": "2026-03-01T11:00:00Z"}}


def stamp(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def pod(age: timedelta, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "agent-g1-train-x1", "creationTimestamp": stamp(NOW - age)},
        "status": status,
    }


def waiting(reason: str, age: timedelta) -> dict[str, Any]:
    state = {"waiting": {"reason": reason, "message": f"{reason}: registry.test/trainer"}}
    return pod(age, containerStatuses=[{"name": "trainer", "state": state}])


@pytest.mark.parametrize(
    "reason", ["ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError"]
)
def test_a_pod_waiting_past_the_limit_fails_the_stage_with_its_reason(reason: str) -> None:
    found = stuck(JOB, [waiting(reason, timedelta(minutes=11))], NOW, LIMIT)
    assert found is not None
    assert (found.outcome, found.reason, found.stuck) == ("failed", reason, True)
    assert "registry.test/trainer" in found.message
    assert stuck(JOB, [waiting(reason, timedelta(minutes=9))], NOW, LIMIT) is None


def test_an_unschedulable_pod_fails_the_stage_after_the_limit() -> None:
    condition = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": "0/4 nodes are available: 4 Insufficient amd.com/gpu.",
        "lastTransitionTime": stamp(NOW - timedelta(minutes=30)),
    }
    found = stuck(JOB, [pod(timedelta(minutes=30), conditions=[condition])], NOW, LIMIT)
    assert found is not None and found.reason == "Unschedulable"
    assert "Insufficient amd.com/gpu" in found.message


def test_a_job_without_any_pod_past_the_limit_is_a_failed_create() -> None:
    found = stuck(JOB, [], NOW, LIMIT)
    assert found is not None and found.reason == "FailedCreate"
    fresh = {"metadata": {"name": "x", "creationTimestamp": stamp(NOW - timedelta(minutes=1))}}
    assert stuck(fresh, [], NOW, LIMIT) is None


def test_a_running_or_pulling_pod_is_not_stuck() -> None:
    running = pod(timedelta(hours=5), containerStatuses=[{"state": {"running": {}}}])
    assert stuck(JOB, [running], NOW, LIMIT) is None
    assert stuck(JOB, [waiting("ContainerCreating", timedelta(hours=1))], NOW, LIMIT) is None


def test_only_tolerations_the_operator_allows_pass() -> None:
    gpu = {"key": "amd.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    anywhere = {"operator": "Exists"}
    settings = OperatorSettings(tolerations=[gpu])
    allowed = finetunejob(resources={"tolerations": [gpu]})
    assert run_state(allowed, settings=settings).problems == ()
    denied = run_state(finetunejob(resources={"tolerations": [gpu, anywhere]}), settings=settings)
    assert [problem.path for problem in denied.problems] == ["spec.resources.tolerations[1]"]
    wider = OperatorSettings(tolerations=[gpu], allowed_tolerations=[gpu, anywhere])
    assert (
        run_state(finetunejob(resources={"tolerations": [anywhere]}), settings=wider).problems == ()
    )


@pytest.mark.parametrize(
    ("status", "for_good"),
    [(400, True), (403, True), (422, True), (409, False), (429, False), (500, False), (503, False)],
)
def test_which_api_refusals_are_for_good(status: int, for_good: bool) -> None:
    error = ApiException(status=status, reason="Reason")
    error.body = json.dumps({"kind": "Status", "message": "what the server said"})
    assert refused_for_good(error) is for_good
    assert api_message(error) == f"{status} Reason: what the server said"
