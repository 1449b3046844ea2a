"""The child objects of a FineTuneJob: its training and benchmark Jobs, built as plain dicts.

Pure functions of the spec and the operator's settings, so that every property of a pod
(security, placement, credentials) is checked without an API server. The pod learns what to
run from `--run <run directory>`, whose config.json holds the resolved spec: no user string
ever reaches a shell.
"""

from __future__ import annotations

from typing import Any

from finetune_core.api import API_VERSION, KIND, FineTuneJobSpec, ResourcesSpec
from finetune_core.exit_codes import EXIT_INVALID_INPUT
from finetune_core.lifecycle import StageName, stage_name
from finetune_core.store import ENDPOINT_ENV, STORE_ENV
from finetune_operator.settings import OperatorSettings

LABEL_JOB = "finetune.dev/job"
LABEL_STAGE = "finetune.dev/stage"
LABEL_GENERATION = "finetune.dev/generation"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
MANAGED_BY = "finetune-operator"

CONTAINER = "trainer"
BENCHMARK_BACKOFF_LIMIT = 1
CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")

# The root filesystem is read-only: HOME and the model cache live on an emptyDir.
CACHE_DIR = "/cache"
HF_HOME = f"{CACHE_DIR}/huggingface"
_MOUNTS = {"shm": "/dev/shm", "tmp": "/tmp", "cache": CACHE_DIR}
HF_CACHE_VOLUME = "huggingface"

# The pod's UID has no passwd entry in the image (getpass.getuser(), which torch's inductor
# uses for its cache path, raises without USER/LOGNAME) and nothing but the volumes is
# writable: every cache goes under CACHE_DIR. The trainer images set the same defaults.
RUNTIME_ENV = {
    "HOME": CACHE_DIR,
    "USER": "finetune",
    "LOGNAME": "finetune",
    "XDG_CACHE_HOME": f"{CACHE_DIR}/.cache",
    "HF_HOME": HF_HOME,
    "TORCHINDUCTOR_CACHE_DIR": f"{CACHE_DIR}/torchinductor",
    "TRITON_CACHE_DIR": f"{CACHE_DIR}/triton",
    "UNSLOTH_COMPILE_LOCATION": f"{CACHE_DIR}/unsloth_compiled_cache",
}


def child_labels(name: str, generation: int, stage: StageName) -> dict[str, str]:
    """Labels on a Job and its pods; `finetune.dev/job=<name>` selects all of a job's children."""
    return {
        LABEL_JOB: name,
        LABEL_STAGE: stage,
        LABEL_GENERATION: str(generation),
        LABEL_MANAGED_BY: MANAGED_BY,
    }


def owner_reference(name: str, uid: str) -> dict[str, Any]:
    """Makes the FineTuneJob the controller of a child: deleting it deletes the child."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def build_job(
    stage: StageName,
    *,
    name: str,
    namespace: str,
    generation: int,
    uid: str | None,
    spec: FineTuneJobSpec,
    settings: OperatorSettings,
    run_uri: str,
    round: int = 1,
) -> dict[str, Any]:
    """The batch/v1 Job that runs `finetune <stage> --run <run_uri>` for one generation (and,
    for a re-benchmark, `--round <k>`)."""
    labels = child_labels(name, generation, stage)
    queue = spec.scheduling.queue_name or settings.default_queue
    if queue:
        labels[LABEL_KUEUE_QUEUE] = queue
    metadata: dict[str, Any] = {
        "name": stage_name(name, generation, stage, round),
        "namespace": namespace,
        "labels": labels,
    }
    if uid:
        metadata["ownerReferences"] = [owner_reference(name, uid)]
    job_spec: dict[str, Any] = {
        # Training retries resume from the last checkpoint; a benchmark is cheap to redo once.
        "backoffLimit": settings.backoff_limit if stage == "train" else BENCHMARK_BACKOFF_LIMIT,
        "podFailurePolicy": _pod_failure_policy(),
        "template": {
            "metadata": {"labels": dict(labels)},
            "spec": _pod_spec(stage, spec.resources, settings, run_uri, round),
        },
    }
    if settings.job_ttl_seconds is not None:
        # The run's status keeps what the lifecycle needs of a finished Job (its outcome,
        # its GPU-hours), so the Job and its pods need not stay.
        job_spec["ttlSecondsAfterFinished"] = settings.job_ttl_seconds
    if queue:
        job_spec["suspend"] = True  # Kueue un-suspends it once the queue admits it
    if spec.scheduling.priority_class_name:
        job_spec["template"]["spec"]["priorityClassName"] = spec.scheduling.priority_class_name
    # A run that never finishes fails instead of holding its GPU forever.
    job_spec["activeDeadlineSeconds"] = (
        (spec.resources.active_deadline_seconds or settings.train_deadline_seconds)
        if stage == "train"
        else settings.benchmark_deadline_seconds
    )
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": job_spec}


def _pod_failure_policy() -> dict[str, Any]:
    """Bad input fails the Job at once; an evicted or preempted pod does not count as a try."""
    return {
        "rules": [
            {
                "action": "FailJob",
                "onExitCodes": {
                    "containerName": CONTAINER,
                    "operator": "In",
                    "values": [EXIT_INVALID_INPUT],
                },
            },
            {
                "action": "Ignore",
                "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
            },
        ]
    }


def _pod_spec(
    stage: StageName,
    resources: ResourcesSpec,
    settings: OperatorSettings,
    run_uri: str,
    round: int = 1,
) -> dict[str, Any]:
    shm_size = resources.shm_size or settings.shm_size
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        # SIGTERM makes the trainer finish its step and upload a checkpoint before it exits.
        "terminationGracePeriodSeconds": settings.termination_grace_seconds,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": settings.run_as_user,
            "runAsGroup": settings.run_as_user,
            "fsGroup": settings.run_as_user,
            "fsGroupChangePolicy": "OnRootMismatch",
            # The GPU device nodes (/dev/kfd, /dev/dri) belong to the video and render groups.
            "supplementalGroups": list(settings.supplemental_groups),
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_container(stage, resources, settings, run_uri, round)],
        "volumes": [
            {
                "name": "shm",
                "emptyDir": {"medium": "Memory", "sizeLimit": shm_size},
            },
            {"name": "tmp", "emptyDir": {"sizeLimit": settings.tmp_size_limit}},
            {"name": "cache", "emptyDir": {"sizeLimit": settings.cache_size_limit}},
        ],
        **_placement(resources, settings),
    }
    if settings.hf_cache_claim:
        # Model downloads outlive the pod: a retry or the benchmark finds them there.
        pod["volumes"].append(
            {
                "name": HF_CACHE_VOLUME,
                "persistentVolumeClaim": {"claimName": settings.hf_cache_claim},
            }
        )
    if settings.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": name} for name in settings.image_pull_secrets]
    if settings.pod_service_account:
        pod["serviceAccountName"] = settings.pod_service_account
    return pod


def _placement(resources: ResourcesSpec, settings: OperatorSettings) -> dict[str, Any]:
    """Node selector and tolerations: the spec's replace the operator's. The operator's
    defaults steer pods to GPU nodes, so a CPU-only job (gpus: 0) does not get them."""
    uses_gpu = resources.gpus > 0
    if resources.node_selector is not None:
        node_selector = dict(resources.node_selector)
    else:
        node_selector = dict(settings.node_selector) if uses_gpu else {}
    if resources.tolerations is not None:
        tolerations = [toleration.to_wire() for toleration in resources.tolerations]
    else:
        tolerations = [dict(t) for t in settings.tolerations] if uses_gpu else []
    placement: dict[str, Any] = {}
    if node_selector:
        placement["nodeSelector"] = node_selector
    if tolerations:
        placement["tolerations"] = tolerations
    return placement


def _container(
    stage: StageName,
    resources: ResourcesSpec,
    settings: OperatorSettings,
    run_uri: str,
    round: int = 1,
) -> dict[str, Any]:
    command = ["finetune", stage, "--run", run_uri]
    if round > 1:
        command += ["--round", str(round)]
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": settings.trainer_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": command,
        "env": _env(settings),
        "volumeMounts": _volume_mounts(settings),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    amounts = _amounts(resources, settings)
    # The emptyDirs live on the node's disk: ask for it (a request only; their sizeLimits
    # bound what the pod may write).
    container["resources"] = {
        "requests": {**amounts, "ephemeral-storage": settings.ephemeral_storage_request}
    }
    if amounts:
        container["resources"]["limits"] = dict(amounts)
    return container


def _volume_mounts(settings: OperatorSettings) -> list[dict[str, str]]:
    mounts = [{"name": volume, "mountPath": path} for volume, path in _MOUNTS.items()]
    if settings.hf_cache_claim:
        mounts.append({"name": HF_CACHE_VOLUME, "mountPath": HF_HOME})
    return mounts


def _amounts(resources: ResourcesSpec, settings: OperatorSettings) -> dict[str, str]:
    """Requests equal limits: extended resources (GPUs) require it, and it keeps a long
    training pod out of the first eviction class."""
    amounts: dict[str, str] = {}
    if resources.gpus > 0:
        amounts[settings.gpu_resource] = str(resources.gpus)
    if resources.cpu:
        amounts["cpu"] = resources.cpu
    if resources.memory:
        amounts["memory"] = resources.memory
    return amounts


def _env(settings: OperatorSettings) -> list[dict[str, Any]]:
    """Where the store is; credentials only by reference to the store Secret."""
    env: list[dict[str, Any]] = [{"name": STORE_ENV, "value": settings.store}]
    if settings.s3_endpoint:
        env.append({"name": ENDPOINT_ENV, "value": settings.s3_endpoint})
    env += [
        {
            "name": key,
            "valueFrom": {"secretKeyRef": {"name": settings.store_secret, "key": key}},
        }
        for key in CREDENTIAL_KEYS
    ]
    env.append({"name": "FINETUNE_LOG_FORMAT", "value": "json"})
    env += [{"name": name, "value": value} for name, value in RUNTIME_ENV.items()]
    return env
