"""Operator configuration from environment variables (set by the Helm chart's values)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, Field, ValidationError, model_validator

MI300X_NODE_SELECTOR = {"amd.com/gpu.product-name": "AMD_Instinct_MI300X_OAM"}
AMD_GPU_TOLERATION = {"key": "amd.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
# The trainer image the chart names by default too (repository + ":" + appVersion).
DEFAULT_TRAINER_IMAGE = "ghcr.io/finetune-operator/finetune-trainer-rocm:0.1.0"

# environment variable -> field; JSON for structured values, commas for lists of scalars.
ENV = {
    "FINETUNE_TRAINER_IMAGE": "trainer_image",
    "FINETUNE_IMAGE_PULL_POLICY": "image_pull_policy",
    "FINETUNE_IMAGE_PULL_SECRETS": "image_pull_secrets",
    "FINETUNE_GPU_RESOURCE": "gpu_resource",
    "FINETUNE_NODE_SELECTOR": "node_selector",
    "FINETUNE_TOLERATIONS": "tolerations",
    "FINETUNE_SUPPLEMENTAL_GROUPS": "supplemental_groups",
    "FINETUNE_RUN_AS_USER": "run_as_user",
    "FINETUNE_STORE": "store",
    "FINETUNE_S3_ENDPOINT": "s3_endpoint",
    "FINETUNE_STORE_SECRET": "store_secret",
    "FINETUNE_NAMESPACES": "namespaces",
    "FINETUNE_PROGRESS_INTERVAL": "progress_interval_seconds",
    "FINETUNE_BACKOFF_LIMIT": "backoff_limit",
    "FINETUNE_SHM_SIZE": "shm_size",
    "FINETUNE_CACHE_SIZE_LIMIT": "cache_size_limit",
    "FINETUNE_TMP_SIZE_LIMIT": "tmp_size_limit",
    "FINETUNE_EPHEMERAL_STORAGE_REQUEST": "ephemeral_storage_request",
    "FINETUNE_HF_CACHE_CLAIM": "hf_cache_claim",
    "FINETUNE_SERVICE_ACCOUNT": "pod_service_account",
    "FINETUNE_LOG_FORMAT": "log_format",
    "FINETUNE_METRICS_PORT": "metrics_port",
    "FINETUNE_HEALTH_PORT": "health_port",
    "FINETUNE_TRAIN_DEADLINE_SECONDS": "train_deadline_seconds",
    "FINETUNE_BENCHMARK_DEADLINE_SECONDS": "benchmark_deadline_seconds",
    "FINETUNE_STUCK_POD_SECONDS": "stuck_pod_seconds",
    "FINETUNE_TERMINATION_GRACE_SECONDS": "termination_grace_seconds",
    "FINETUNE_ALLOWED_TOLERATIONS": "allowed_tolerations",
    "FINETUNE_DEFAULT_QUEUE": "default_queue",
    "FINETUNE_GPU_MEMORY_GIB": "gpu_memory_gib",
    "FINETUNE_GPU_HOUR_PRICE": "gpu_hour_price",
    "FINETUNE_CURRENCY": "currency",
    "FINETUNE_JOB_TTL_SECONDS": "job_ttl_seconds",
    "FINETUNE_KEEP_GENERATIONS": "keep_generations",
    "FINETUNE_LEADER_ELECTION": "leader_election",
    "FINETUNE_LEASE_NAME": "lease_name",
    "FINETUNE_LEASE_NAMESPACE": "lease_namespace",
    "FINETUNE_LEASE_DURATION": "lease_duration_seconds",
    "FINETUNE_LEASE_RENEW_DEADLINE": "lease_renew_deadline_seconds",
    "FINETUNE_LEASE_RETRY_PERIOD": "lease_retry_period_seconds",
    "FINETUNE_LEADER_IDENTITY": "leader_identity",
    "FINETUNE_API_TIMEOUT": "api_timeout_seconds",
}


class OperatorSettings(BaseModel):
    """Cluster-wide defaults for the pods the operator creates."""

    trainer_image: str = Field(
        default=DEFAULT_TRAINER_IMAGE,
        description="Image the training and benchmark Jobs run (entrypoint: finetune).",
    )
    image_pull_policy: str = "IfNotPresent"
    image_pull_secrets: list[str] = Field(
        default_factory=list,
        description="Secrets (in the job's namespace) the pods pull the trainer image with.",
    )
    gpu_resource: str = Field(default="amd.com/gpu", description="Extended resource for GPUs.")
    node_selector: dict[str, str] = Field(default_factory=lambda: dict(MI300X_NODE_SELECTOR))
    tolerations: list[dict[str, Any]] = Field(default_factory=lambda: [dict(AMD_GPU_TOLERATION)])
    supplemental_groups: list[int] = Field(
        default_factory=lambda: [44, 110],
        description="video and render group IDs on the GPU hosts (they differ per distribution).",
    )
    run_as_user: int = 1000
    store: str = Field(default="s3://finetune", description="s3://bucket[/prefix] for artifacts.")
    s3_endpoint: str | None = None
    store_secret: str = Field(
        default="finetune-store",
        description="Secret (in the job's namespace) with AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY for the pods.",
    )
    namespaces: list[str] = Field(default_factory=list, description="Empty: cluster-wide.")
    progress_interval_seconds: float = Field(default=15.0, gt=0)
    backoff_limit: int = Field(default=3, ge=0)
    shm_size: str = "16Gi"
    cache_size_limit: str = Field(
        default="64Gi",
        description="sizeLimit of the cache emptyDir (HOME, compile caches and, without "
        "hf_cache_claim, the Hugging Face downloads).",
    )
    tmp_size_limit: str = Field(default="8Gi", description="sizeLimit of the /tmp emptyDir.")
    ephemeral_storage_request: str = Field(
        default="32Gi",
        description="ephemeral-storage the pods request, so they land on a node with the disk.",
    )
    hf_cache_claim: str | None = Field(
        default=None,
        description="PersistentVolumeClaim (in the job's namespace) for the Hugging Face cache: "
        "model downloads survive retries and runs.",
    )
    pod_service_account: str | None = None
    log_format: str = "text"
    metrics_port: int = 8080
    health_port: int = 8081
    train_deadline_seconds: int = Field(
        default=7 * 24 * 3600,
        ge=60,
        description="activeDeadlineSeconds of a training Job unless the FineTuneJob sets "
        "resources.activeDeadlineSeconds: a run that never finishes fails instead.",
    )
    benchmark_deadline_seconds: int = Field(
        default=4 * 3600, ge=60, description="activeDeadlineSeconds of a benchmark Job."
    )
    stuck_pod_seconds: float = Field(
        default=600.0,
        gt=0,
        description="How long a stage's pod may wait (ImagePullBackOff, ErrImagePull, "
        "CreateContainerConfigError, Unschedulable) or a Job may have no pod at all (quota) "
        "before the run fails with the pod's reason.",
    )
    termination_grace_seconds: int = Field(
        default=600,
        ge=30,
        description="terminationGracePeriodSeconds of the pods: one training step plus the "
        "checkpoint upload, which the trainer does on SIGTERM.",
    )
    allowed_tolerations: list[dict[str, Any]] | None = Field(
        default=None,
        description="Tolerations a FineTuneJob may ask for in resources.tolerations (matched "
        "on key, operator, value and effect); None: only the operator's own `tolerations`. "
        "A job author must not place pods on arbitrary tainted nodes.",
    )

    gpu_memory_gib: float = Field(
        default=192.0,
        gt=0,
        description="One GPU's memory in GiB (MI300X: 192): a run estimated to need more fails "
        "before any pod is created.",
    )
    default_queue: str | None = Field(
        default=None,
        description="Kueue LocalQueue for FineTuneJobs that name none (spec.scheduling.queueName).",
    )
    gpu_hour_price: float = Field(
        default=0.0,
        ge=0,
        description="Price of one GPU-hour, for status.cost.estimatedCost.",
    )
    currency: str = Field(default="USD", min_length=1, description="The price's currency.")
    job_ttl_seconds: int | None = Field(
        default=86400,
        ge=0,
        description="ttlSecondsAfterFinished of the Jobs: a finished Job (and its pods) is "
        "deleted that long after it ended. The run's status keeps what the lifecycle needs "
        "(its outcome, its GPU-hours); None: finished Jobs stay until their FineTuneJob goes.",
    )
    keep_generations: int | None = Field(
        default=None,
        ge=0,
        description="Superseded generations' run directories kept in the store per job "
        "unless the FineTuneJob sets spec.retention.keepGenerations; None: all.",
    )

    def toleration_allowed(self, toleration: Mapping[str, Any]) -> bool:
        allowed = self.tolerations if self.allowed_tolerations is None else self.allowed_tolerations
        fields = ("key", "operator", "value", "effect")
        wanted = tuple(toleration.get(f) for f in fields)
        return any(tuple(a.get(f) for f in fields) == wanted for a in allowed)

    # Leader election (finetune_operator.leader): only the holder of the Lease reconciles.
    leader_election: bool = Field(
        default=True, description="Off: this process reconciles without taking the Lease."
    )
    lease_name: str = "finetune-operator"
    lease_namespace: str | None = Field(
        default=None, description="Empty: the operator's own namespace (its service account's)."
    )
    lease_duration_seconds: float = Field(default=15.0, ge=1)
    lease_renew_deadline_seconds: float = Field(default=10.0, gt=0)
    lease_retry_period_seconds: float = Field(default=2.0, gt=0)
    leader_identity: str | None = Field(
        default=None,
        description="Who holds the Lease; empty: the host name and a random suffix. The chart "
        "sets the pod name, so a restarted container takes its Lease back at once.",
    )

    api_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description="Limit of one Kubernetes API request (a watch: of its connection); a "
        "request that hangs longer fails and its reconcile is retried.",
    )

    @model_validator(mode="after")
    def _lease_timing(self) -> OperatorSettings:
        # The leader must give up before anyone else may take over, and retry in between.
        if not self.lease_renew_deadline_seconds < self.lease_duration_seconds:
            raise ValueError(
                "lease_renew_deadline_seconds must be less than lease_duration_seconds"
            )
        if not self.lease_retry_period_seconds < self.lease_renew_deadline_seconds:
            raise ValueError(
                "lease_retry_period_seconds must be less than lease_renew_deadline_seconds"
            )
        return self

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorSettings:
        """Read the settings; a bad value raises ValueError naming the variable."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for variable, field in ENV.items():
            raw = env.get(variable)
            if raw is None or raw == "":
                continue
            if field in {"node_selector", "tolerations", "allowed_tolerations"}:
                try:
                    values[field] = json.loads(raw)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{variable}: not valid JSON ({error})") from None
            elif field in {"supplemental_groups", "namespaces", "image_pull_secrets"}:
                values[field] = [item.strip() for item in raw.split(",") if item.strip()]
            else:
                values[field] = raw
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            first = error.errors()[0]
            if not first["loc"]:  # a rule across fields (the lease timings)
                raise ValueError(_variables(first["msg"])) from None
            variable = next(v for v, f in ENV.items() if f == first["loc"][0])
            raise ValueError(f"{variable}: {first['msg']}") from None


def _variables(message: str) -> str:
    """A message about fields, in the names of their environment variables."""
    for variable, field in ENV.items():
        message = message.replace(field, variable)
    return message.removeprefix("Value error, ")
