"""GitOps examples: the Argo CD health check for FineTuneJob, run in Lua 5.1 (the dialect
of Argo CD's gopher-lua) on sample statuses, and the Argo CD / Flux objects' references."""

from __future__ import annotations

from typing import Any

import lupa.lua51 as lua51
import pytest
import yaml

from tests.integration.deploy.k8s import CRD_FILE, REPO, documents
from tests.support.manifests import finetunejob

ARGOCD = REPO / "manifests" / "gitops" / "argocd"
FLUX = REPO / "manifests" / "gitops" / "flux"
HEALTH_LUA = ARGOCD / "finetunejob-health.lua"
HEALTH_KEY = "resource.customizations.health.finetune.dev_FineTuneJob"


def health(obj: dict[str, Any]) -> tuple[str, str]:
    """Run the health script as Argo CD does: `obj` global, a table returned."""
    runtime = lua51.LuaRuntime()
    runtime.globals().obj = runtime.table_from(obj, recursive=True)
    result = runtime.execute(HEALTH_LUA.read_text())
    return result["status"], result["message"]


def condition(kind: str, status: str, generation: int, message: str = "") -> dict[str, Any]:
    return {
        "type": kind,
        "status": status,
        "reason": kind,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }


def job(generation: int, status: dict[str, Any] | None) -> dict[str, Any]:
    return finetunejob(
        "agent1-phi4",
        namespace="ml",
        generation=generation,
        status=status,
        dataset={"uri": "s3://datasets/v3.jsonl"},
    )


def recorded(phase: str, *conditions: dict[str, Any]) -> dict[str, Any]:
    """A status recorded for generation 3."""
    return {"phase": phase, "observedGeneration": 3, "conditions": list(conditions)}


PROMOTED = recorded(
    "Promoted",
    condition("Ready", "True", 3, "Promoted to s3://finetune/models/ml/phi-4/agent1-phi4-g3/"),
    condition("Reconciling", "False", 3),
    condition("Stalled", "False", 3),
)
TRAINING = recorded(
    "Training",
    condition("Ready", "False", 3, "Training: step 120/900"),
    condition("Reconciling", "True", 3),
)
REJECTED = recorded(
    "Rejected",
    condition("Ready", "False", 3),
    condition("Stalled", "True", 3, "SLA not met: question p95 12.1s > 10s"),
)
FAILED_WITHOUT_STALLED = {"phase": "Failed", "observedGeneration": 3, "message": "OOMKilled"}
AWAITING = {
    "phase": "AwaitingApproval",
    "observedGeneration": 3,
    "message": "Benchmark passed; annotate finetune.dev/approve=true to promote",
    "conditions": [condition("Ready", "False", 3)],
}
STALLED_OTHER_PHASE = {
    "phase": "Validating",
    "observedGeneration": 3,
    "conditions": [condition("Stalled", "True", 3, "spec.lora.r: must be >= 1")],
}


@pytest.mark.parametrize(
    ("generation", "status", "expected", "message_has"),
    [
        (3, PROMOTED, "Healthy", "models/ml/phi-4"),
        (3, TRAINING, "Progressing", "step 120/900"),
        (3, REJECTED, "Degraded", "SLA not met"),
        (3, FAILED_WITHOUT_STALLED, "Degraded", "OOMKilled"),
        (3, STALLED_OTHER_PHASE, "Degraded", "spec.lora.r"),
        (3, AWAITING, "Suspended", "finetune.dev/approve"),
        # A new commit bumped the generation; the status still describes the old one.
        (4, PROMOTED, "Progressing", "generation 4"),
        (4, REJECTED, "Progressing", "generation 4"),
        (1, None, "Progressing", "operator"),
        (1, {"phase": "Pending"}, "Progressing", "generation 1"),
    ],
)
def test_argocd_health(
    generation: int, status: dict[str, Any] | None, expected: str, message_has: str
) -> None:
    state, message = health(job(generation, status))
    assert state == expected
    assert message_has in message


def test_ready_condition_of_an_older_generation_is_not_healthy() -> None:
    """observedGeneration caught up but Ready still stamped for the previous spec."""
    status = dict(PROMOTED, observedGeneration=4, phase="Training")
    status["conditions"] = [condition("Ready", "True", 3, "old run")]
    assert health(job(4, status))[0] == "Progressing"


def test_argocd_cm_embeds_the_health_script() -> None:
    (config_map,) = documents((ARGOCD / "argocd-cm.yaml").read_text())
    assert config_map["kind"] == "ConfigMap" and config_map["metadata"]["name"] == "argocd-cm"
    assert config_map["data"][HEALTH_KEY] == HEALTH_LUA.read_text()


def test_argocd_applications_point_at_this_repository_layout() -> None:
    (operator,) = documents((ARGOCD / "application-operator.yaml").read_text())
    source = operator["spec"]["source"]
    chart = REPO / source["path"]
    assert (chart / "Chart.yaml").exists()
    for values_file in source["helm"]["valueFiles"]:
        assert (chart / values_file).exists(), values_file
    assert "ServerSideApply=true" in operator["spec"]["syncPolicy"]["syncOptions"]

    (jobs,) = documents((ARGOCD / "application-jobs.yaml").read_text())
    assert jobs["spec"]["syncPolicy"]["automated"]["prune"] is False


def test_flux_health_checks_target_the_finetunejob_kind() -> None:
    crd = yaml.safe_load(CRD_FILE.read_text())
    served = {f"{crd['spec']['group']}/{v['name']}" for v in crd["spec"]["versions"] if v["served"]}
    kustomizations = {
        doc["metadata"]["name"]: doc
        for doc in documents((FLUX / "kustomizations.yaml").read_text())
    }
    sources = {
        doc["metadata"]["name"] for doc in documents((FLUX / "gitrepository.yaml").read_text())
    }

    operator = kustomizations["finetune-operator"]
    assert (REPO / operator["spec"]["path"] / "kustomization.yaml").exists()
    assert operator["spec"]["wait"] is True

    jobs = kustomizations["ml-finetune-jobs"]
    assert jobs["spec"]["dependsOn"] == [{"name": "finetune-operator"}]
    checks = jobs["spec"]["healthChecks"]
    assert checks and all(
        check["kind"] == crd["spec"]["names"]["kind"] and check["apiVersion"] in served
        for check in checks
    )
    assert {k["spec"]["sourceRef"]["name"] for k in kustomizations.values()} <= sources
