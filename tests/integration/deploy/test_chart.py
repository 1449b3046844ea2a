"""The Helm chart through Helm's own Go SDK: lint, render, schema, and what the rendered
objects promise (the operator's settings, credentials by reference, probes, metrics)."""

from __future__ import annotations

import json
from typing import Any

import helm_python as helm
import pytest
import yaml

from finetune_core.api import FineTuneJobSpec
from finetune_operator.builders import build_job
from finetune_operator.settings import DEFAULT_TRAINER_IMAGE, OperatorSettings
from tests.integration.deploy.k8s import (
    CHART,
    CRD_FILE,
    KUBE_VERSIONS,
    RELEASE_NAMESPACE,
    REPO,
    chart_values_file,
    container_env,
    find,
    kustomize,
    one,
    operator_settings,
    render_chart,
    schema_problems,
)

NAMESPACED = {"rbac": {"scope": "namespaced"}, "watchNamespaces": ["team-a", "team-b"]}
MONITORED = {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}}
SCENARIOS = {
    "defaults": None,
    "mi300x": chart_values_file("values-mi300x.yaml"),
    "namespaced": NAMESPACED,
    "monitored": MONITORED,
}


@pytest.fixture(scope="module", params=list(SCENARIOS))
def scenario(request: pytest.FixtureRequest) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(the values as Helm merges them, the rendered objects) for each scenario."""
    values = SCENARIOS[request.param]
    with helm.Chart.load(CHART) as chart:
        merged = chart.merge_values(values)
        merged["appVersion"] = chart.metadata["appVersion"]
    return merged, render_chart(values)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_lint_is_clean(name: str) -> None:
    for version in KUBE_VERSIONS:
        report = helm.lint(
            CHART,
            SCENARIOS[name],
            strict=True,
            namespace=RELEASE_NAMESPACE,
            kube_version=f"v{version}",
        )
        findings = [m for m in report["messages"] if m["severity"] >= 2]
        assert report["errors"] == [] and findings == [], (name, version, report)


def test_every_rendered_object_validates(scenario: tuple[dict[str, Any], list[Any]]) -> None:
    _, objects = scenario
    assert {obj["kind"] for obj in objects} >= {"Deployment", "ServiceAccount"}
    assert schema_problems(objects) == []


def test_chart_crd_is_the_generated_crd() -> None:
    """crds/ holds a copy (Helm reads nothing outside the chart): `make chart-crd`."""
    assert CRD_FILE.exists(), f"{CRD_FILE} is missing: run `make crd`"
    with helm.Chart.load(CHART) as chart:
        crds = chart.crds
    assert sorted(crd["filename"] for crd in crds) == [
        "finetune-operator/crds/finetunejobs.finetune.dev.yaml",
        "finetune-operator/crds/finetunetournaments.finetune.dev.yaml",
    ]
    for found in crds:
        committed = CRD_FILE.parent / found["filename"].rsplit("/", 1)[-1]
        assert found["data"] == committed.read_text(), "chart CRD differs: run `make chart-crd`"
        crd = yaml.safe_load(found["data"])
        assert crd["kind"] == "CustomResourceDefinition"
        assert schema_problems([crd]) == []


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"trainer": {"backoffLimit": "three"}}, "/trainer/backoffLimit"),
        ({"trainer": {"supplementalGroups": "44,110"}}, "/trainer/supplementalGroups"),
        ({"trainer": {"nodeSelector": {"gpu": True}}}, "/trainer/nodeSelector/gpu"),
        ({"store": {"uri": "minio://finetune"}}, "/store/uri"),
        ({"store": {"endpoint": "minio:9000"}}, "/store/endpoint"),
        ({"store": {"existingSecret": ""}}, "/store/existingSecret"),
        ({"rbac": {"scope": "everything"}}, "/rbac/scope"),
        ({"logFormat": "xml"}, "/logFormat"),
        ({"metrics": {"port": 80000}}, "/metrics/port"),
        ({"trainer": {"shmSize": "lots"}}, "/trainer/shmSize"),
        ({"trainer": {"cacheSizeLimit": "big"}}, "/trainer/cacheSizeLimit"),
        ({"trainer": {"ephemeralStorageRequest": 5}}, "/trainer/ephemeralStorageRequest"),
        ({"trainer": {"imagePullSecrets": ["regcred"]}}, "/trainer/imagePullSecrets/0"),
        ({"trainer": {"imagePullSecrets": [{"name": "Reg_Cred"}]}}, "/trainer/imagePullSecrets"),
        ({"trainer": {"huggingfaceCache": {"existingClaim": "HF"}}}, "/trainer/huggingfaceCache"),
        ({"trainer": {"huggingfaceCache": {"claim": "hf"}}}, "/trainer/huggingfaceCache"),
        ({"storage": {"uri": "s3://typo"}}, "storage"),
        ({"rbac": {"scope": "namespaced"}}, "watchNamespaces"),
        ({"replicas": 0}, "/replicas"),
        ({"leaderElection": {"leaseDurationSeconds": "15s"}}, "/leaderElection"),
    ],
)
def test_bad_values_fail_rendering_naming_the_key(values: dict[str, Any], named: str) -> None:
    with pytest.raises(helm.HelmValuesError) as failure:
        render_chart(values)
    assert named in str(failure.value)


def test_operator_env_is_exactly_the_settings_and_parses(
    scenario: tuple[dict[str, Any], list[Any]],
) -> None:
    values, objects = scenario
    settings = operator_settings(one(objects, "Deployment"))
    trainer, store = values["trainer"], values["store"]
    tag = trainer["image"]["tag"] or values["appVersion"]
    assert settings.trainer_image == f"{trainer['image']['repository']}:{tag}"
    assert settings.image_pull_policy == trainer["image"]["pullPolicy"]
    assert settings.gpu_resource == trainer["gpuResource"]
    assert settings.node_selector == trainer["nodeSelector"]
    assert settings.tolerations == trainer["tolerations"]
    assert settings.supplemental_groups == trainer["supplementalGroups"]
    assert settings.run_as_user == trainer["runAsUser"]
    assert settings.shm_size == trainer["shmSize"]
    assert settings.cache_size_limit == trainer["cacheSizeLimit"]
    assert settings.tmp_size_limit == trainer["tmpSizeLimit"]
    assert settings.ephemeral_storage_request == trainer["ephemeralStorageRequest"]
    assert settings.hf_cache_claim == (trainer["huggingfaceCache"]["existingClaim"] or None)
    assert settings.image_pull_secrets == [item["name"] for item in trainer["imagePullSecrets"]]
    assert settings.backoff_limit == trainer["backoffLimit"]
    assert settings.pod_service_account == (trainer["serviceAccountName"] or None)
    assert settings.store == store["uri"]
    assert settings.s3_endpoint == (store["endpoint"] or None)
    assert settings.store_secret == (store["podSecret"] or store["existingSecret"])
    assert settings.namespaces == values["watchNamespaces"]
    assert settings.progress_interval_seconds == values["progressIntervalSeconds"]
    assert settings.log_format == values["logFormat"]
    assert settings.metrics_port == values["metrics"]["port"]
    assert settings.health_port == values["health"]["port"]
    assert settings.api_timeout_seconds == values["apiTimeoutSeconds"]
    assert settings.gpu_hour_price == trainer["gpuHourPrice"]
    assert settings.currency == trainer["currency"]
    assert settings.job_ttl_seconds == trainer["jobTtlSecondsAfterFinished"]
    assert settings.keep_generations == (
        None if trainer["keepGenerations"] == "" else trainer["keepGenerations"]
    )
    election = values["leaderElection"]
    assert settings.leader_election == election["enabled"]
    assert settings.lease_name == election["leaseName"]
    assert settings.lease_duration_seconds == election["leaseDurationSeconds"]
    assert settings.lease_renew_deadline_seconds == election["renewDeadlineSeconds"]
    assert settings.lease_retry_period_seconds == election["retryPeriodSeconds"]
    env = container_env(one(objects, "Deployment"))
    assert env["FINETUNE_LEASE_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["FINETUNE_LEADER_IDENTITY"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_store_credentials_come_only_from_the_existing_secret() -> None:
    objects = render_chart({"store": {"existingSecret": "minio-creds"}})
    assert not find(objects, "Secret"), "the chart must never create a credentials Secret"
    env = container_env(one(objects, "Deployment"))
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[key] == {"secretKeyRef": {"name": "minio-creds", "key": key}}
    with helm.Chart.load(CHART) as chart:
        defaults = json.dumps(chart.values)
    assert "AWS_SECRET_ACCESS_KEY" not in defaults and "password" not in defaults.lower()


def test_operator_deployment_is_locked_down_and_probed(
    scenario: tuple[dict[str, Any], list[Any]],
) -> None:
    values, objects = scenario
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == values["replicas"]
    # With leader election a new pod may start beside the old one: it waits for the Lease.
    assert "strategy" not in deployment["spec"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is True
    (container,) = pod["containers"]
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert set(container["resources"]) == {"requests", "limits"}
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])

    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"metrics": values["metrics"]["port"], "health": values["health"]["port"]}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}

    account = find(objects, "ServiceAccount")
    assert [sa["metadata"]["name"] for sa in account] == [pod["serviceAccountName"]]
    assert account[0]["automountServiceAccountToken"] is False


def test_service_monitor_scrapes_the_operator_pod() -> None:
    assert not find(render_chart(), "ServiceMonitor")
    objects = render_chart(MONITORED)
    service = one(objects, "Service")
    monitor = one(objects, "ServiceMonitor")
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "30s"}
    ]
    assert [port["name"] for port in service["spec"]["ports"]] == ["metrics"]


def test_notes_walk_through_the_first_job() -> None:
    with helm.Chart.load(CHART) as chart:
        notes = chart.render(
            values=NAMESPACED, name="finetune-operator", namespace=RELEASE_NAMESPACE
        )["finetune-operator/templates/NOTES.txt"]
    steps = [
        "create secret generic finetune-store",
        "AWS_ACCESS_KEY_ID",
        "kubectl -n team-a apply -f manifests/examples/quickstart.yaml",
        "kubectl -n team-a get ftj",
        "--for=condition=Ready",
    ]
    positions = [notes.find(step) for step in steps]
    assert -1 not in positions, notes
    assert positions == sorted(positions), "NOTES.txt lists the steps out of order"


def test_default_trainer_image_is_the_operators_default() -> None:
    """A chart without trainer.image set and an operator without FINETUNE_TRAINER_IMAGE
    run the same image, and so does the Kustomize base."""
    deployment = one(render_chart(), "Deployment")
    assert operator_settings(deployment).trainer_image == DEFAULT_TRAINER_IMAGE
    assert OperatorSettings().trainer_image == DEFAULT_TRAINER_IMAGE
    with helm.Chart.load(CHART) as chart:
        app_version = chart.metadata["appVersion"]
    assert DEFAULT_TRAINER_IMAGE.endswith(f":{app_version}")
    base = one(kustomize(REPO / "manifests" / "kustomize" / "base"), "Deployment")
    assert container_env(base)["FINETUNE_TRAINER_IMAGE"] == DEFAULT_TRAINER_IMAGE


def test_chart_values_reach_the_training_and_benchmark_pods() -> None:
    """Chart values -> operator environment -> the pods the operator builds, which
    Kubernetes' own schemas accept."""
    values = {
        "trainer": {
            "imagePullSecrets": [{"name": "regcred"}, {"name": "mirror"}],
            "huggingfaceCache": {"existingClaim": "hf-cache"},
            "cacheSizeLimit": "100Gi",
            "tmpSizeLimit": "2Gi",
            "ephemeralStorageRequest": "120Gi",
        }
    }
    settings = operator_settings(one(render_chart(values), "Deployment"))
    spec = FineTuneJobSpec.model_validate(
        {"model": {"preset": "phi-4"}, "dataset": {"uri": "s3://datasets/agent1.jsonl"}}
    )
    for stage in ("train", "benchmark"):
        job = build_job(
            stage,
            name="agent1",
            namespace="ml",
            generation=1,
            uid=None,
            spec=spec,
            settings=settings,
            run_uri="s3://finetune/runs/ml/agent1/g1",
        )
        assert schema_problems([job]) == []
        pod = job["spec"]["template"]["spec"]
        assert pod["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror"}]
        claims = [
            v["persistentVolumeClaim"] for v in pod["volumes"] if "persistentVolumeClaim" in v
        ]
        assert claims == [{"claimName": "hf-cache"}]
        limits = {v["name"]: v["emptyDir"]["sizeLimit"] for v in pod["volumes"] if "emptyDir" in v}
        assert limits["cache"] == "100Gi" and limits["tmp"] == "2Gi"
        (container,) = pod["containers"]
        assert container["resources"]["requests"]["ephemeral-storage"] == "120Gi"


def test_replicas_wait_for_the_lease_or_stay_one() -> None:
    deployment = one(render_chart({"replicas": 2}), "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert operator_settings(deployment).leader_election is True
    single = one(render_chart({"leaderElection": {"enabled": False}}), "Deployment")
    assert single["spec"]["replicas"] == 1
    assert single["spec"]["strategy"] == {"type": "Recreate"}
    assert operator_settings(single).leader_election is False
    with pytest.raises(helm.HelmError) as failure:
        render_chart({"replicas": 2, "leaderElection": {"enabled": False}})
    assert "leaderElection" in str(failure.value)
