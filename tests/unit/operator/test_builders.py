"""The training and benchmark Jobs: valid batch/v1 objects, locked down, credentials by
reference only, user strings never near a shell."""

from __future__ import annotations

import json
from typing import Any

import kubernetes_validate
import pytest

from finetune_core.api import MAX_NAME_LENGTH, FineTuneJobSpec
from finetune_core.exit_codes import EXIT_INVALID_INPUT
from finetune_core.lifecycle import StageName, stage_name
from finetune_operator.builders import RUNTIME_ENV, build_job
from finetune_operator.settings import OperatorSettings
from tests.conftest import TEST_CREDENTIALS

KUBERNETES_VERSIONS = ["1.30", kubernetes_validate.latest_version().rsplit(".", 1)[0]]
RUN_URI = "s3://finetune/runs/ml/agent1/g3"
UID = "6f1f1c3e-0c1b-4a8e-9d55-0d2f3c1e7a10"
OVERRIDES: dict[str, Any] = {
    "cpu": "16",
    "memory": "128Gi",
    "shmSize": "32Gi",
    "nodeSelector": {"pool": "cpu-large"},
    "tolerations": [
        {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}
    ],
    "activeDeadlineSeconds": 86400,
}
RESOURCE_CASES: dict[str, dict[str, Any]] = {
    "gpu": {"gpus": 1},
    "cpu": {"gpus": 0},
    "overrides": {"gpus": 1, **OVERRIDES},
}


def make_spec(resources: dict[str, Any], **sections: Any) -> FineTuneJobSpec:
    return FineTuneJobSpec.model_validate(
        {
            "model": {"preset": "phi-4"},
            "dataset": {"uri": "s3://datasets/agent1/curated-v1.jsonl"},
            "resources": resources,
            **sections,
        }
    )


def settings(**changes: Any) -> OperatorSettings:
    return OperatorSettings(s3_endpoint="http://minio.storage:9000", **changes)


def job(
    stage: StageName = "train",
    resources: dict[str, Any] | None = None,
    uid: str | None = UID,
    config: OperatorSettings | None = None,
    run_uri: str = RUN_URI,
    **sections: Any,
) -> dict[str, Any]:
    return build_job(
        stage,
        name="agent1",
        namespace="ml",
        generation=3,
        uid=uid,
        spec=make_spec(resources if resources is not None else {"gpus": 1}, **sections),
        settings=config or settings(),
        run_uri=run_uri,
    )


def pod(built: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = built["spec"]["template"]["spec"]
    return spec


def container(built: dict[str, Any]) -> dict[str, Any]:
    [only] = pod(built)["containers"]
    return dict(only)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("case", RESOURCE_CASES)
@pytest.mark.parametrize("stage", ["train", "benchmark"])
def test_jobs_are_valid_kubernetes_objects(stage: StageName, case: str, version: str) -> None:
    built = job(stage, RESOURCE_CASES[case])
    assert kubernetes_validate.validate(built, version, strict=True) == version
    everything = settings(image_pull_secrets=["registry"], hf_cache_claim="hf-models")
    built = job(stage, RESOURCE_CASES[case], config=everything)
    assert kubernetes_validate.validate(built, version, strict=True) == version


def test_names_are_deterministic_per_generation_and_stage() -> None:
    assert stage_name("agent1", 3, "train") == "agent1-g3-train"
    assert stage_name("agent1", 3, "benchmark") == "agent1-g3-bench"
    assert job("train")["metadata"]["name"] == "agent1-g3-train"
    assert job("benchmark")["metadata"]["name"] == "agent1-g3-bench"
    assert job("train")["metadata"]["namespace"] == "ml"
    assert job("train") == job("train")
    longest = "a" * MAX_NAME_LENGTH  # what manifest validation lets through
    assert len(stage_name(longest, 999_999, "train")) == 63
    with pytest.raises(ValueError, match="longer than 63"):
        stage_name(longest, 1_000_000, "train")


@pytest.mark.parametrize("stage", ["train", "benchmark"])
def test_labels_on_job_and_pods(stage: StageName) -> None:
    built = job(stage)
    expected = {
        "finetune.dev/job": "agent1",
        "finetune.dev/stage": stage,
        "finetune.dev/generation": "3",
        "app.kubernetes.io/managed-by": "finetune-operator",
    }
    assert built["metadata"]["labels"] == expected
    assert built["spec"]["template"]["metadata"]["labels"] == expected


def test_owner_reference_makes_the_finetunejob_the_controller() -> None:
    assert job()["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "finetune.dev/v1alpha1",
            "kind": "FineTuneJob",
            "name": "agent1",
            "uid": UID,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert "ownerReferences" not in job(uid=None)["metadata"]


@pytest.mark.parametrize("case", RESOURCE_CASES)
@pytest.mark.parametrize("stage", ["train", "benchmark"])
def test_pods_are_locked_down(stage: StageName, case: str) -> None:
    built = job(stage, RESOURCE_CASES[case])
    spec = pod(built)
    assert spec["automountServiceAccountToken"] is False
    assert spec["restartPolicy"] == "Never"
    assert spec["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "fsGroup": 1000,
        "fsGroupChangePolicy": "OnRootMismatch",
        "supplementalGroups": [44, 110],
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    security = container(built)["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert "privileged" not in security
    assert container(built)["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert "hostNetwork" not in spec and "hostPID" not in spec and "hostIPC" not in spec
    assert all(set(volume) == {"name", "emptyDir"} for volume in spec["volumes"])
    # Every emptyDir is bounded: a runaway cache evicts this pod, not its neighbours.
    assert all("sizeLimit" in volume["emptyDir"] for volume in spec["volumes"])


def mounted_under(path: str, mounts: dict[str, str]) -> str | None:
    """The deepest mount that holds `path`, or None when it is on the (read-only) root."""
    holders = [m for m in mounts if path == m or path.startswith(m.rstrip("/") + "/")]
    return max(holders, key=len) if holders else None


def test_writable_paths_are_volumes() -> None:
    built = job()
    volumes = {volume["name"]: volume for volume in pod(built)["volumes"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in container(built)["volumeMounts"]}
    assert set(mounts.values()) == set(volumes)
    assert volumes[mounts["/dev/shm"]]["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}
    assert volumes[mounts["/tmp"]]["emptyDir"] == {"sizeLimit": "8Gi"}
    assert volumes[mounts["/cache"]]["emptyDir"] == {"sizeLimit": "64Gi"}
    env = {item["name"]: item.get("value") for item in container(built)["env"]}
    caches = [
        "HOME",
        "HF_HOME",
        "XDG_CACHE_HOME",
        "TORCHINDUCTOR_CACHE_DIR",
        "TRITON_CACHE_DIR",
        "UNSLOTH_COMPILE_LOCATION",
    ]
    for variable in caches:
        assert mounted_under(env[variable], mounts) not in {None, "/dev/shm"}, variable


def test_an_unknown_uid_still_has_a_user_name() -> None:
    """getpass.getuser() reads LOGNAME/USER before the passwd file, which has no entry for
    the pod's UID; torch's inductor cache path calls it."""
    env = {item["name"]: item.get("value") for item in container(job())["env"]}
    assert env["USER"] and env["LOGNAME"]
    assert {name: env[name] for name in RUNTIME_ENV} == RUNTIME_ENV


def test_size_limits_and_disk_request_from_the_settings() -> None:
    config = settings(
        cache_size_limit="200Gi", tmp_size_limit="1Gi", ephemeral_storage_request="50Gi"
    )
    for stage in ("train", "benchmark"):
        built = job(stage, config=config)
        limits = {v["name"]: v["emptyDir"].get("sizeLimit") for v in pod(built)["volumes"]}
        assert limits == {"shm": "16Gi", "tmp": "1Gi", "cache": "200Gi"}
        assert container(built)["resources"]["requests"]["ephemeral-storage"] == "50Gi"
        # A request only: the emptyDirs' sizeLimits are what bound the pod's writes.
        assert "ephemeral-storage" not in container(built)["resources"]["limits"]


def test_hugging_face_cache_on_a_claim_when_configured() -> None:
    assert all("persistentVolumeClaim" not in v for v in pod(job())["volumes"])
    config = settings(hf_cache_claim="hf-models")
    for stage in ("train", "benchmark"):
        built = job(stage, config=config)
        volumes = {volume["name"]: volume for volume in pod(built)["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in container(built)["volumeMounts"]}
        env = {item["name"]: item.get("value") for item in container(built)["env"]}
        holder = mounted_under(env["HF_HOME"], mounts)
        assert holder == env["HF_HOME"]
        assert volumes[mounts[holder]] == {
            "name": "huggingface",
            "persistentVolumeClaim": {"claimName": "hf-models"},
        }
        # The rest of the cache (HOME, compile caches) stays on the bounded emptyDir.
        assert mounted_under(env["TRITON_CACHE_DIR"], mounts) == "/cache"
        assert set(mounts.values()) == set(volumes)


def test_image_pull_secrets_reach_both_pods() -> None:
    assert "imagePullSecrets" not in pod(job())
    config = settings(image_pull_secrets=["registry-a", "registry-b"])
    for stage in ("train", "benchmark"):
        assert pod(job(stage, config=config))["imagePullSecrets"] == [
            {"name": "registry-a"},
            {"name": "registry-b"},
        ]


def test_shm_size_from_the_spec_or_the_settings() -> None:
    def shm(built: dict[str, Any]) -> str:
        [volume] = [v for v in pod(built)["volumes"] if v["emptyDir"].get("medium") == "Memory"]
        return str(volume["emptyDir"]["sizeLimit"])

    assert shm(job(resources={"shmSize": "32Gi"})) == "32Gi"
    assert shm(job(config=settings(shm_size="8Gi"))) == "8Gi"


def test_command_is_an_argv_list_without_a_shell() -> None:
    hostile = "s3://finetune/runs/ml/x/g1; rm -rf / $(id) `id`"
    for stage in ("train", "benchmark"):
        built = job(stage, run_uri=hostile)
        assert container(built)["command"] == ["finetune", stage, "--run", hostile]
        assert "args" not in container(built)
        serialized = json.dumps(built)
        assert '"sh"' not in serialized and '"-c"' not in serialized and "bash" not in serialized


def test_credentials_come_only_from_the_store_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in TEST_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    built = job(config=settings(store_secret="minio-creds"))
    env = {item["name"]: item for item in container(built)["env"]}
    for key in TEST_CREDENTIALS:
        assert env[key] == {
            "name": key,
            "valueFrom": {"secretKeyRef": {"name": "minio-creds", "key": key}},
        }
    serialized = json.dumps(built)
    for value in TEST_CREDENTIALS.values():
        assert value not in serialized
    assert env["FINETUNE_STORE"]["value"] == "s3://finetune"
    assert env["FINETUNE_S3_ENDPOINT"]["value"] == "http://minio.storage:9000"
    assert env["FINETUNE_LOG_FORMAT"]["value"] == "json"
    assert "FINETUNE_S3_ENDPOINT" not in {
        item["name"] for item in container(job(config=OperatorSettings()))["env"]
    }


def test_image_and_service_account_from_the_settings() -> None:
    config = settings(
        trainer_image="registry.local/trainer-cuda:1.2",
        image_pull_policy="Always",
        pod_service_account="trainer",
    )
    built = job(config=config)
    assert container(built)["image"] == "registry.local/trainer-cuda:1.2"
    assert container(built)["imagePullPolicy"] == "Always"
    assert pod(built)["serviceAccountName"] == "trainer"
    assert pod(built)["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in pod(job())


def test_gpu_job_gets_the_gpu_and_the_gpu_nodes() -> None:
    built = job(resources={"gpus": 1})
    assert container(built)["resources"] == {
        "requests": {"amd.com/gpu": "1", "ephemeral-storage": "32Gi"},
        "limits": {"amd.com/gpu": "1"},
    }
    assert pod(built)["nodeSelector"] == {"amd.com/gpu.product-name": "AMD_Instinct_MI300X_OAM"}
    assert pod(built)["tolerations"] == [
        {"key": "amd.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    nvidia = job(config=settings(gpu_resource="nvidia.com/gpu", node_selector={}))
    assert container(nvidia)["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert "nodeSelector" not in pod(nvidia)


def test_cpu_job_asks_for_no_gpu_and_no_gpu_nodes() -> None:
    built = job(resources={"gpus": 0})
    assert container(built)["resources"] == {"requests": {"ephemeral-storage": "32Gi"}}
    assert "nodeSelector" not in pod(built)
    assert "tolerations" not in pod(built)


def test_spec_resources_replace_the_operator_defaults() -> None:
    for gpus in (0, 1):
        built = job(resources={**OVERRIDES, "gpus": gpus})
        amounts = {"cpu": "16", "memory": "128Gi"} | ({"amd.com/gpu": "1"} if gpus else {})
        assert container(built)["resources"] == {
            "requests": amounts | {"ephemeral-storage": "32Gi"},
            "limits": amounts,
        }
        assert pod(built)["nodeSelector"] == {"pool": "cpu-large"}
        assert pod(built)["tolerations"] == OVERRIDES["tolerations"]


def test_retries_and_deadlines() -> None:
    deadline = {"activeDeadlineSeconds": 7200}
    train = job("train", resources=deadline, config=settings(backoff_limit=5))
    bench = job("benchmark", resources=deadline)
    assert train["spec"]["backoffLimit"] == 5
    assert bench["spec"]["backoffLimit"] == 1
    assert train["spec"]["activeDeadlineSeconds"] == 7200
    # Without one in the spec, the operator's defaults: no Job runs forever.
    defaults = OperatorSettings()
    assert bench["spec"]["activeDeadlineSeconds"] == defaults.benchmark_deadline_seconds
    assert job("train")["spec"]["activeDeadlineSeconds"] == defaults.train_deadline_seconds
    short = settings(train_deadline_seconds=3600, benchmark_deadline_seconds=600)
    assert job("train", config=short)["spec"]["activeDeadlineSeconds"] == 3600
    assert job("benchmark", config=short)["spec"]["activeDeadlineSeconds"] == 600
    for built in (train, bench):
        pod = built["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] == defaults.termination_grace_seconds
        # A finished Job goes after a day: the status keeps what the lifecycle needs of it.
        assert built["spec"]["ttlSecondsAfterFinished"] == defaults.job_ttl_seconds == 86400
    assert (
        job("train", config=settings(job_ttl_seconds=600))["spec"]["ttlSecondsAfterFinished"] == 600
    )
    assert (
        "ttlSecondsAfterFinished" not in job("train", config=settings(job_ttl_seconds=None))["spec"]
    )


@pytest.mark.parametrize("stage", ["train", "benchmark"])
def test_invalid_input_fails_the_job_without_retries(stage: StageName) -> None:
    rules = job(stage)["spec"]["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "FailJob"
    assert rules[0]["onExitCodes"] == {
        "containerName": "trainer",
        "operator": "In",
        "values": [EXIT_INVALID_INPUT],
    }
    assert {"type": "DisruptionTarget", "status": "True"} in rules[1]["onPodConditions"]
    assert rules[1]["action"] == "Ignore"
    assert container(job(stage))["name"] == "trainer"


def test_a_queued_job_is_created_suspended_with_kueues_label() -> None:
    """Kueue admits it against the queue's quota by un-suspending it."""
    queued = job("train", scheduling={"queueName": "mi300x", "priorityClassName": "research"})
    assert queued["spec"]["suspend"] is True
    assert queued["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "mi300x"
    assert queued["spec"]["template"]["spec"]["priorityClassName"] == "research"
    by_default = job("benchmark", config=settings(default_queue="team-a"))
    assert by_default["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    plain = job("train")
    assert "suspend" not in plain["spec"]
    assert "kueue.x-k8s.io/queue-name" not in plain["metadata"]["labels"]
