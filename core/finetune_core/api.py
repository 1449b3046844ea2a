"""The FineTuneJob API, finetune.dev/v1alpha1: spec and status models.

These models are the single source of the API: the CRD schema, `kubectl explain`, the
README's field reference and every validation message are generated from them.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from finetune_core.presets import GENERIC, PRESETS, Preset

GROUP = "finetune.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "FineTuneJob"
PLURAL = "finetunejobs"
SINGULAR = "finetunejob"
SHORT_NAMES = ["ftj"]
CATEGORIES = ["finetune"]

DATASET_SCHEMES = ("s3://", "file://")
# Longest generation suffix we allow for: "-g" + 6 digits + "-bench"/"-train".
MAX_NAME_LENGTH = 63 - len("-g999999-train")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class ApiModel(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are errors (typos)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=False,
    )

    def to_wire(self) -> dict[str, Any]:
        """The object as the API server stores it: camelCase, no unset optional fields."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class StatusModel(ApiModel):
    """Status is written by us; tolerate fields written by a newer operator."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


PositiveInt = Annotated[int, Field(ge=1)]


class ModelSpec(ApiModel):
    """Which base model to fine-tune."""

    preset: str | None = Field(
        default=None,
        description=(
            "A named preset carrying the model id and tested LoRA/training settings: "
            + ", ".join(PRESETS)
            + ". Explicit fields override the preset's values."
        ),
    )
    name: str | None = Field(
        default=None,
        description="A model id (e.g. unsloth/Qwen3-8B) or the s3:// URI of a saved model. "
        "Overrides the preset's model id.",
    )
    max_seq_length: int | None = Field(
        default=None,
        ge=16,
        le=131072,
        description="Longest conversation in tokens after the chat template is applied.",
    )
    load_in_4bit: bool | None = Field(
        default=None,
        alias="loadIn4bit",
        description="Load the base model in 4-bit (QLoRA). Ignored on CPU, where it loads "
        "in full precision.",
    )

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str | None) -> str | None:
        if value is not None and value not in PRESETS:
            raise ValueError(f"unknown preset {value!r}; known presets: {', '.join(PRESETS)}")
        return value

    @model_validator(mode="after")
    def _preset_or_name(self) -> ModelSpec:
        if self.preset is None and not self.name:
            raise ValueError("set model.preset or model.name")
        return self


class DatasetSpec(ApiModel):
    """The training data: chat conversations, one JSON object per line."""

    uri: str = Field(
        description='JSONL with one {"messages": [{"role", "content"}, ...]} per line: '
        "s3://bucket/key, file:///path, or (local runs) a path relative to the manifest.",
        min_length=1,
    )
    validation_split: float = Field(
        default=0.1,
        gt=0,
        lt=0.5,
        description="Fraction of conversations held out for evaluation, in (0, 0.5).",
    )
    too_long: Literal["truncate", "reject"] = Field(
        default="truncate",
        description="What to do with a conversation longer than model.maxSeqLength: truncate "
        "it (and count it) or reject the dataset.",
    )

    @field_validator("uri")
    @classmethod
    def _scheme(cls, value: str) -> str:
        check_uri(value)
        return value


class LoraSpec(ApiModel):
    """LoRA adapter settings; unset fields come from the preset."""

    r: int | None = Field(default=None, ge=1, le=1024, description="Rank of the adapter, 1..1024.")
    alpha: int | None = Field(default=None, ge=1, description="Scaling numerator (lora_alpha).")
    dropout: float | None = Field(
        default=None,
        ge=0,
        lt=1,
        description="Dropout on the adapter's input; 0 lets unsloth use its fast path.",
    )
    target_modules: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Names of the modules to adapt (e.g. q_proj, v_proj). Checked against the "
        "model before training.",
    )

    @field_validator("target_modules")
    @classmethod
    def _non_empty_names(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and any(not name.strip() for name in value):
            raise ValueError("module names must not be empty")
        return value


class TrainingSpec(ApiModel):
    """Optimiser and schedule; unset fields come from the preset."""

    epochs: float | None = Field(default=None, gt=0, description="Passes over the training split.")
    batch_size: int | None = Field(default=None, ge=1, description="Conversations per device step.")
    gradient_accumulation_steps: int | None = Field(
        default=None, ge=1, description="Device steps per optimiser step."
    )
    learning_rate: float | None = Field(default=None, gt=0, description="Peak learning rate.")
    warmup_steps: int | None = Field(default=None, ge=0, description="Linear warm-up steps.")
    optimizer: str | None = Field(
        default=None,
        description="A transformers optimizer name (adamw_torch, adamw_8bit, ...). 8-bit "
        "optimizers fall back to adamw_torch where bitsandbytes cannot run.",
    )
    precision: Literal["bf16", "fp16", "fp32"] = Field(
        default="bf16", description="Compute precision on GPU. CPU runs use fp32."
    )
    seed: int = Field(
        default=3407, description="Seed for the split, the adapter init and the data order."
    )
    save_steps: int = Field(
        default=100, ge=1, description="Save a checkpoint every N optimiser steps."
    )
    keep_checkpoints: int = Field(
        default=3, ge=1, description="How many checkpoints to keep in the store."
    )
    max_steps: int | None = Field(
        default=None, ge=1, description="Stop after this many optimiser steps (caps the epochs)."
    )


class Toleration(ApiModel):
    """A Kubernetes toleration (core/v1 Toleration)."""

    key: str | None = Field(default=None, description="Taint key.")
    operator: Literal["Exists", "Equal"] | None = Field(
        default=None, description="Exists or Equal."
    )
    value: str | None = Field(default=None, description="Taint value (with Equal).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to tolerate."
    )


class ResourcesSpec(ApiModel):
    """What the training and benchmark pods ask for. GPU resource name, node selector and
    tolerations default to the operator's configuration."""

    gpus: int = Field(default=1, ge=0, le=8, description="GPUs per pod; 0 runs on CPU nodes.")
    cpu: str | None = Field(default=None, description="CPU request and limit, e.g. '8'.")
    memory: str | None = Field(default=None, description="Memory request and limit, e.g. 64Gi.")
    shm_size: str | None = Field(default=None, description="Size of the /dev/shm memory volume.")
    node_selector: dict[str, str] | None = Field(
        default=None, description="Replaces the operator's node selector for this job."
    )
    tolerations: list[Toleration] | None = Field(
        default=None, description="Replaces the operator's tolerations for this job."
    )
    active_deadline_seconds: int | None = Field(
        default=None, ge=60, description="Fail the training Job after this many seconds."
    )


class SlaProfile(ApiModel):
    """A latency limit for one kind of generation."""

    name: str = Field(min_length=1, description="Profile name, e.g. question or answer.")
    max_new_tokens: int = Field(ge=1, le=32768, description="Tokens generated per sample.")
    max_latency_seconds: float = Field(
        gt=0, description="Limit on the chosen percentile of end-to-end latency, in seconds."
    )
    prompts: str | None = Field(
        default=None,
        description="JSONL of {messages} to prompt with (same URI forms as dataset.uri); default: "
        "user turns from the validation split.",
    )

    @field_validator("name")
    @classmethod
    def _name_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("profile name must not be blank")
        return value

    @field_validator("prompts")
    @classmethod
    def _prompts_scheme(cls, value: str | None) -> str | None:
        if value is not None:
            check_uri(value)
        return value


class BenchmarkSpec(ApiModel):
    """How the adapted model is measured against its latency SLA."""

    samples: int = Field(default=20, ge=1, le=10000, description="Measured samples per profile.")
    warmup: int = Field(default=2, ge=0, description="Warm-up samples per profile, not counted.")
    percentile: Literal[50, 90, 95, 99] = Field(
        default=95, description="Which latency percentile is held to the limit."
    )
    merge_adapter: bool = Field(
        default=False, description="Merge the adapter into the base weights before measuring."
    )
    sla: list[SlaProfile] = Field(
        default_factory=list, description="Latency profiles; every one must pass to promote."
    )

    @field_validator("sla")
    @classmethod
    def _unique_names(cls, value: list[SlaProfile]) -> list[SlaProfile]:
        seen: set[str] = set()
        for profile in value:
            if profile.name in seen:
                raise ValueError(f"duplicate SLA profile name {profile.name!r}")
            seen.add(profile.name)
        return value


class PromotionSpec(ApiModel):
    """When a model that passed the benchmark becomes the current one."""

    policy: Literal["auto", "manual"] = Field(
        default="auto",
        description="auto promotes on a passing benchmark; manual waits for the annotation "
        'finetune.dev/approve: "true".',
    )
    require_improvement: bool = Field(
        default=False,
        description="Also require the adapter's eval loss to beat the base model's and the "
        "currently promoted model's.",
    )


class FineTuneJobSpec(ApiModel):
    """Desired state: fine-tune this model on this dataset, then gate it on this SLA."""

    model: ModelSpec = Field(description="The base model.")
    dataset: DatasetSpec = Field(description="The training data.")
    lora: LoraSpec = Field(default_factory=LoraSpec, description="LoRA settings.")
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="Training settings.")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="Pod resources.")
    benchmark: BenchmarkSpec = Field(
        default_factory=BenchmarkSpec, description="Latency benchmark and SLA."
    )
    promotion: PromotionSpec = Field(default_factory=PromotionSpec, description="Promotion policy.")

    def resolve(self) -> ResolvedSpec:
        """Fill every unset field from the preset (or generic defaults)."""
        preset: Preset = PRESETS[self.model.preset] if self.model.preset else GENERIC
        m, lo, t = self.model, self.lora, self.training
        return ResolvedSpec(
            preset=self.model.preset,
            model_id=m.name or preset.model_id,
            max_seq_length=m.max_seq_length or preset.max_seq_length,
            load_in_4bit=preset.load_in_4bit if m.load_in_4bit is None else m.load_in_4bit,
            lora_r=lo.r or preset.lora_r,
            lora_alpha=lo.alpha or preset.lora_alpha,
            lora_dropout=preset.lora_dropout if lo.dropout is None else lo.dropout,
            target_modules=lo.target_modules or list(preset.target_modules),
            epochs=t.epochs or preset.epochs,
            batch_size=t.batch_size or preset.batch_size,
            gradient_accumulation_steps=t.gradient_accumulation_steps
            or preset.gradient_accumulation_steps,
            learning_rate=t.learning_rate or preset.learning_rate,
            warmup_steps=preset.warmup_steps if t.warmup_steps is None else t.warmup_steps,
            optimizer=t.optimizer or preset.optimizer,
            precision=t.precision,
            seed=t.seed,
            save_steps=t.save_steps,
            keep_checkpoints=t.keep_checkpoints,
            max_steps=t.max_steps,
            dataset=self.dataset,
            benchmark=self.benchmark,
            promotion=self.promotion,
        )


def check_uri(uri: str) -> None:
    """Reject URI schemes we cannot read (http://, gs://, ...). Plain paths are local files."""
    if "://" in uri and not uri.startswith(DATASET_SCHEMES):
        scheme = uri.split("://", 1)[0]
        raise ValueError(
            f"unsupported URI scheme {scheme}://; use s3://bucket/key, file:///path or a "
            "relative path"
        )


class ResolvedSpec(ApiModel):
    """A spec with presets applied: what the pods actually run. Stored as config.json."""

    preset: str | None = None
    model_id: str
    max_seq_length: int
    load_in_4bit: bool = Field(alias="loadIn4bit")
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    target_modules: list[str]
    epochs: float
    batch_size: int
    gradient_accumulation_steps: int
    learning_rate: float
    warmup_steps: int
    optimizer: str
    precision: Literal["bf16", "fp16", "fp32"]
    seed: int
    save_steps: int
    keep_checkpoints: int
    max_steps: int | None = None
    dataset: DatasetSpec
    benchmark: BenchmarkSpec
    promotion: PromotionSpec


class RunConfig(ApiModel):
    """config.json in a run directory: who the run is and what it runs."""

    namespace: str
    name: str
    generation: int = Field(ge=1)
    spec: ResolvedSpec
    created_at: datetime | None = None


# ---------------------------------------------------------------- status


Phase = Literal[
    "Pending",
    "Validating",
    "Training",
    "Benchmarking",
    "AwaitingApproval",
    "Promoted",
    "Rejected",
    "Failed",
]
TERMINAL_PHASES: frozenset[str] = frozenset({"Promoted", "Rejected", "Failed"})


class Condition(StatusModel):
    """A Kubernetes-style condition (metav1.Condition)."""

    type: str = Field(description="Ready, Reconciling or Stalled.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(description="CamelCase reason for the last transition.")
    message: str = Field(default="", description="What happened, for a person.")
    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation the condition was set for."
    )
    last_transition_time: str | None = Field(
        default=None, description="When the status last changed (RFC 3339)."
    )


class Progress(StatusModel):
    """Training progress, refreshed from the run's progress.json."""

    step: int | None = Field(default=None, description="Optimiser steps done.")
    total_steps: int | None = Field(default=None, description="Optimiser steps in the run.")
    epoch: float | None = Field(default=None, description="Epochs done (fractional).")
    loss: float | None = Field(default=None, description="Latest training loss.")
    learning_rate: float | None = Field(default=None, description="Current learning rate.")
    tokens_per_second: float | None = Field(default=None, description="Training throughput.")
    eta_seconds: float | None = Field(default=None, description="Estimated seconds left.")
    updated_at: str | None = Field(default=None, description="When the trainer wrote it.")
    percent: int | None = Field(default=None, description="step / totalSteps, in percent.")


class Metrics(StatusModel):
    """Training results, from the run's metrics.json."""

    train_loss: float | None = Field(default=None, description="Final training loss.")
    eval_loss: float | None = Field(
        default=None, description="Adapter's loss on the validation split."
    )
    perplexity: float | None = Field(default=None, description="exp(evalLoss).")
    base_eval_loss: float | None = Field(
        default=None, description="Base model's loss on the same validation split."
    )
    train_runtime_seconds: float | None = Field(default=None, description="Training wall time.")
    train_tokens: int | None = Field(default=None, description="Tokens trained on.")
    dataset_sha256: str | None = Field(default=None, description="sha256 of the dataset file.")
    train_rows: int | None = Field(default=None, description="Conversations in the training split.")
    eval_rows: int | None = Field(
        default=None, description="Conversations in the validation split."
    )
    truncated_rows: int | None = Field(
        default=None, description="Conversations cut to model.maxSeqLength."
    )
    backend: str | None = Field(
        default=None,
        description="What trained the adapter: unsloth or transformers (FINETUNE_BACKEND).",
    )


class ProfileResult(StatusModel):
    """One SLA profile's measurement (seconds)."""

    name: str = Field(description="Profile name.")
    max_new_tokens: int | None = Field(default=None, description="Tokens generated per sample.")
    max_latency_seconds: float | None = Field(default=None, description="The limit.")
    samples: int | None = Field(default=None, description="Measured samples.")
    p50: float | None = Field(default=None, description="Median end-to-end latency.")
    p90: float | None = Field(default=None, description="90th percentile latency.")
    p95: float | None = Field(default=None, description="95th percentile latency.")
    p99: float | None = Field(default=None, description="99th percentile latency.")
    max: float | None = Field(default=None, description="Slowest sample.")
    ttft_p50: float | None = Field(default=None, description="Median time to first token.")
    itl_p50: float | None = Field(default=None, description="Median inter-token latency.")
    tokens_per_second: float | None = Field(default=None, description="Median output tokens/s.")
    passed: bool | None = Field(default=None, description="Chosen percentile <= limit.")


class BenchmarkReport(StatusModel):
    """report/benchmark.json; a summary of it is copied into the status."""

    passed: bool = Field(description="Every profile met its limit (and any quality gate).")
    percentile: int | None = Field(default=None, description="The percentile held to the limits.")
    device: str | None = Field(default=None, description="Where it was measured.")
    profiles: list[ProfileResult] = Field(default_factory=list, description="Per-profile results.")
    eval_loss: float | None = Field(default=None, description="Adapter's eval loss.")
    base_eval_loss: float | None = Field(default=None, description="Base model's eval loss.")
    perplexity: float | None = Field(default=None, description="Adapter's perplexity.")
    base_perplexity: float | None = Field(default=None, description="Base model's perplexity.")
    reasons: list[str] = Field(default_factory=list, description="Why it did not pass.")
    backend: str | None = Field(default=None, description="unsloth or transformers.")
    dtype: str | None = Field(default=None, description="Compute dtype of the weights.")
    merged_adapter: bool | None = Field(
        default=None, description="Adapter merged into the weights."
    )
    versions: dict[str, str] = Field(default_factory=dict, description="Library versions.")
    measured_at: str | None = Field(default=None, description="When it was measured.")


class Artifacts(StatusModel):
    """Where the run's outputs are in the store."""

    run: str | None = Field(default=None, description="The run directory.")
    adapter: str | None = Field(default=None, description="The trained LoRA adapter.")
    report: str | None = Field(default=None, description="The HTML benchmark report.")
    last_checkpoint: str | None = Field(default=None, description="Newest complete checkpoint.")


class RunRecord(StatusModel):
    """A finished or superseded run, kept in status.runs."""

    generation: int = Field(description="metadata.generation of the run.")
    phase: str = Field(description="Where the run ended.")
    message: str | None = Field(default=None, description="Why it ended there.")
    eval_loss: float | None = Field(default=None, description="Adapter's eval loss.")
    sla_passed: bool | None = Field(default=None, description="SLA verdict.")
    run: str | None = Field(default=None, description="Its run directory.")
    finished_at: str | None = Field(default=None, description="When it ended.")


class FineTuneJobStatus(StatusModel):
    """Observed state, written by the operator."""

    phase: Phase | None = Field(default=None, description="Where the current run is.")
    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation this status describes."
    )
    message: str | None = Field(default=None, description="The latest event, for a person.")
    model: str | None = Field(default=None, description="The resolved base model id.")
    conditions: list[Condition] = Field(
        default_factory=list, description="Ready, Reconciling, Stalled."
    )
    progress: Progress | None = Field(default=None, description="Training progress.")
    metrics: Metrics | None = Field(default=None, description="Training metrics.")
    benchmark: BenchmarkReport | None = Field(default=None, description="Benchmark summary.")
    artifacts: Artifacts | None = Field(default=None, description="Artifact URIs.")
    promoted_model: str | None = Field(default=None, description="URI of the promoted copy.")
    sla: str | None = Field(default=None, description="SLA verdict for printing: Passed or Failed.")
    started_at: str | None = Field(default=None, description="When the current run started.")
    runs: list[RunRecord] = Field(
        default_factory=list, description="Earlier runs, newest first (5)."
    )
