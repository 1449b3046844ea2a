"""The Pod Security Standards' restricted profile: the operator's pod (chart and Kustomize)
and the training and benchmark pods the operator builds all pass it, and the checker
itself catches each kind of violation."""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import cache
from typing import Any

import pytest

from finetune_core.api import FineTuneJobSpec
from finetune_core.lifecycle import StageName
from finetune_operator.builders import build_job
from finetune_operator.settings import OperatorSettings
from tests.integration.deploy.k8s import (
    REPO,
    chart_values_file,
    kustomize,
    one,
    render_chart,
    schema_problems,
)
from tests.integration.deploy.pod_security import restricted_violations

PodSpec = dict[str, Any]


@cache
def operator_pods() -> dict[str, PodSpec]:
    """Rendered once per session; callers that change a pod deep-copy it."""
    sources = {
        "chart defaults": render_chart(),
        "chart mi300x": render_chart(chart_values_file("values-mi300x.yaml")),
        "kustomize mi300x": kustomize(REPO / "manifests" / "kustomize" / "overlays" / "mi300x"),
    }
    return {
        name: one(objects, "Deployment")["spec"]["template"]["spec"]
        for name, objects in sources.items()
    }


def training_job(stage: StageName, resources: dict[str, Any]) -> dict[str, Any]:
    spec = FineTuneJobSpec.model_validate(
        {
            "model": {"preset": "phi-4"},
            "dataset": {"uri": "s3://datasets/cerberus/v3.jsonl"},
            "resources": resources,
        }
    )
    return build_job(
        stage,
        name="agent1-phi4",
        namespace="ml",
        generation=3,
        uid="0d8c6f0e-5d0a-4a5e-9a51-3f1f0b1e9c11",
        spec=spec,
        settings=OperatorSettings(s3_endpoint="http://minio.minio:9000"),
        run_uri="s3://finetune/runs/ml/agent1-phi4/g3",
    )


@pytest.mark.parametrize("source", ["chart defaults", "chart mi300x", "kustomize mi300x"])
def test_operator_pod_is_restricted(source: str) -> None:
    assert restricted_violations(operator_pods()[source]) == []


@pytest.mark.parametrize("stage", ["train", "benchmark"])
@pytest.mark.parametrize("resources", [{"gpus": 1}, {"gpus": 0, "cpu": "4", "memory": "16Gi"}])
def test_training_pods_are_restricted(stage: StageName, resources: dict[str, Any]) -> None:
    job = training_job(stage, resources)
    assert schema_problems([job]) == []
    pod = job["spec"]["template"]["spec"]
    assert restricted_violations(pod, job["spec"]["template"]["metadata"].get("annotations")) == []
    # restricted allows the video/render groups the GPU device files need
    assert pod["securityContext"]["supplementalGroups"] == [44, 110]
    assert pod["automountServiceAccountToken"] is False


def _set(path: str, value: Any) -> Callable[[PodSpec], None]:
    """A mutation that sets a dotted path (`c` is the first container)."""

    def mutate(pod: PodSpec) -> None:
        target: Any = pod
        *parents, last = path.split(".")
        for part in parents:
            target = pod["containers"][0] if part == "c" else target.setdefault(part, {})
        target[last] = value

    return mutate


VIOLATIONS: dict[str, tuple[Callable[[PodSpec], None], str]] = {
    "host network": (_set("hostNetwork", True), "spec.hostNetwork"),
    "host PID": (_set("hostPID", True), "spec.hostPID"),
    "host IPC": (_set("hostIPC", True), "spec.hostIPC"),
    "privileged": (_set("c.securityContext.privileged", True), "privileged"),
    "privilege escalation": (
        _set("c.securityContext.allowPrivilegeEscalation", True),
        "allowPrivilegeEscalation",
    ),
    "root container": (_set("c.securityContext.runAsNonRoot", False), "runAsNonRoot"),
    "uid 0": (_set("securityContext.runAsUser", 0), "runAsUser"),
    "unconfined seccomp": (
        _set("c.securityContext.seccompProfile", {"type": "Unconfined"}),
        "seccompProfile",
    ),
    "capability kept": (_set("c.securityContext.capabilities", {"drop": ["NET_RAW"]}), "drop"),
    "capability added": (
        _set("c.securityContext.capabilities", {"drop": ["ALL"], "add": ["SYS_ADMIN"]}),
        "SYS_ADMIN",
    ),
    "hostPath volume": (
        lambda pod: pod.setdefault("volumes", []).append(
            {"name": "dev", "hostPath": {"path": "/dev/kfd"}}
        ),
        "hostPath",
    ),
    "host port": (
        lambda pod: (
            pod["containers"][0]
            .setdefault("ports", [])
            .append({"name": "x", "containerPort": 80, "hostPort": 80})
        ),
        "hostPort",
    ),
    "unsafe sysctl": (
        _set("securityContext.sysctls", [{"name": "kernel.msgmax", "value": "1"}]),
        "sysctls",
    ),
    "proc mount": (_set("c.securityContext.procMount", "Unmasked"), "procMount"),
    "selinux user": (_set("c.securityContext.seLinuxOptions", {"user": "root"}), "seLinuxOptions"),
    "apparmor": (
        _set("c.securityContext.appArmorProfile", {"type": "Unconfined"}),
        "appArmorProfile",
    ),
}


@pytest.mark.parametrize("case", list(VIOLATIONS))
def test_checker_catches_each_violation(case: str) -> None:
    mutate, field = VIOLATIONS[case]
    pod = copy.deepcopy(operator_pods()["chart defaults"])
    mutate(pod)
    problems = restricted_violations(pod)
    assert any(field in problem for problem in problems), problems


def test_checker_needs_seccomp_somewhere() -> None:
    pod = copy.deepcopy(operator_pods()["chart defaults"])
    del pod["securityContext"]["seccompProfile"]
    del pod["containers"][0]["securityContext"]["seccompProfile"]
    assert any("seccompProfile" in problem for problem in restricted_violations(pod))
