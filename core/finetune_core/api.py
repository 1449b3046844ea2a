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
from finetune_core.syntax import (
    DNS_LABEL_PATTERN,
    LABEL_KEY_MAX,
    LABEL_VALUE_MAX,
    LABEL_VALUE_PATTERN,
    QUANTITY_PATTERN,
    bucket_problem,
    label_key_problem,
    label_value_problem,
    quantity_problem,
    s3_object_problem,
)

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
DNS_LABEL = re.compile(DNS_LABEL_PATTERN)
SHA256_PATTERN = r"^[0-9a-f]{64}$"
# Upper bounds that catch typos (and values the API server cannot store) long before they
# cost a GPU-day; each is stated in its field's description.
MAX_SEED = 2**32 - 1
MAX_SAMPLES = 1000
MAX_WARMUP_SAMPLES = 100
MAX_WARMUP_STEPS = 10000
MAX_TOLERATIONS = 32


class ApiModel(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are errors (typos)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=False,
        # NaN and infinities are not JSON: the API server rejects a status holding one.
        allow_inf_nan=False,
    )

    def to_wire(self) -> dict[str, Any]:
        """The object as the API server stores it: camelCase, no unset optional fields."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class StatusModel(ApiModel):
    """Status is written by us; tolerate fields written by a newer operator."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", allow_inf_nan=False
    )


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
        strict=True,
        ge=16,
        le=131072,
        description="Longest conversation in tokens after the chat template is applied.",
    )
    load_in_4bit: bool | None = Field(
        default=None,
        strict=True,
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

    @field_validator("name")
    @classmethod
    def _saved_model(cls, value: str | None) -> str | None:
        if value is not None and value.startswith("s3://"):
            bucket = value.removeprefix("s3://").partition("/")[0]
            if problem := bucket_problem(bucket):
                raise ValueError(problem)
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
        "s3://bucket/key (a valid bucket name and a non-empty key), file:///path, or (local "
        "runs) a path relative to the manifest.",
        min_length=1,
    )
    sha256: str | None = Field(
        default=None,
        description="Pins the dataset's content: its sha256 (64 lower-case hex digits, as "
        "sha256sum prints it). A run whose dataset differs fails with DatasetChanged.",
        json_schema_extra={"pattern": SHA256_PATTERN},
    )
    validation_split: float = Field(
        strict=True,
        default=0.1,
        allow_inf_nan=False,
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

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(SHA256_PATTERN, value):
            raise ValueError(
                f"{value[:80]!r} is not a sha256: expected 64 lower-case hex digits "
                "(sha256sum FILE)"
            )
        return value


class LoraSpec(ApiModel):
    """LoRA adapter settings; unset fields come from the preset."""

    r: int | None = Field(
        default=None, strict=True, ge=1, le=1024, description="Rank of the adapter, 1..1024."
    )
    alpha: int | None = Field(
        default=None,
        strict=True,
        ge=1,
        le=4096,
        description="Scaling numerator (lora_alpha), 1..4096.",
    )
    dropout: float | None = Field(
        strict=True,
        default=None,
        allow_inf_nan=False,
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

    epochs: float | None = Field(
        strict=True,
        default=None,
        allow_inf_nan=False,
        gt=0,
        le=1000,
        description="Passes over the training split, at most 1000.",
    )
    batch_size: int | None = Field(
        default=None,
        strict=True,
        ge=1,
        le=4096,
        description="Conversations per device step, 1..4096.",
    )
    gradient_accumulation_steps: int | None = Field(
        default=None,
        strict=True,
        ge=1,
        le=4096,
        description="Device steps per optimiser step, 1..4096.",
    )
    learning_rate: float | None = Field(
        strict=True,
        default=None,
        allow_inf_nan=False,
        gt=0,
        le=1,
        description="Peak learning rate, in (0, 1].",
    )
    warmup_steps: int | None = Field(
        default=None,
        strict=True,
        ge=0,
        le=MAX_WARMUP_STEPS,
        description=f"Linear warm-up steps, 0..{MAX_WARMUP_STEPS}.",
    )
    optimizer: str | None = Field(
        default=None,
        description="A transformers optimizer name (adamw_torch, adamw_8bit, ...). 8-bit "
        "optimizers fall back to adamw_torch where bitsandbytes cannot run.",
    )
    precision: Literal["bf16", "fp16", "fp32"] = Field(
        default="bf16", description="Compute precision on GPU. CPU runs use fp32."
    )
    seed: int = Field(
        default=3407,
        strict=True,
        ge=0,
        le=MAX_SEED,
        description=f"Seed for the split, the adapter init and the data order, 0..{MAX_SEED}.",
    )
    save_steps: int = Field(
        default=100,
        strict=True,
        ge=1,
        le=1_000_000,
        description="Save a checkpoint every N optimiser steps, 1..1000000.",
    )
    keep_checkpoints: int = Field(
        default=3,
        strict=True,
        ge=1,
        le=100,
        description="How many checkpoints to keep in the store, 1..100.",
    )
    max_steps: int | None = Field(
        default=None,
        strict=True,
        ge=1,
        le=10_000_000,
        description="Stop after this many optimiser steps (caps the epochs), 1..10000000.",
    )
    packing: bool = Field(
        default=True,
        strict=True,
        description="Pack each batch's conversations end to end into one row, without "
        "padding (each attends only to itself; the loss is the padded batch's). false pads "
        "every conversation to the batch's longest. The unsloth backend always pads.",
    )


class Toleration(ApiModel):
    """A Kubernetes toleration (core/v1 Toleration)."""

    model_config = ConfigDict(
        json_schema_extra={
            # The API server's own rules for a toleration, so that kubectl refuses what a Job
            # built from it would be refused for. size() keeps the rules' cost constant.
            "x-kubernetes-validations": [
                {
                    "rule": "(has(self.key) && size(self.key) > 0) || "
                    "(has(self.operator) && self.operator == 'Exists')",
                    "message": "a toleration without a key must have operator Exists",
                },
                {
                    "rule": "!has(self.operator) || self.operator != 'Exists' || "
                    "!has(self.value) || size(self.value) == 0",
                    "message": "a toleration with operator Exists must not have a value",
                },
            ]
        }
    )

    key: str | None = Field(
        default=None,
        description="Taint key (a label key); empty, with operator Exists, matches every taint.",
        json_schema_extra={"maxLength": LABEL_KEY_MAX},
    )
    operator: Literal["Exists", "Equal"] | None = Field(
        default=None, description="Exists or Equal (the default)."
    )
    value: str | None = Field(
        default=None,
        description="Taint value (a label value; with Equal, never with Exists).",
        json_schema_extra={"maxLength": LABEL_VALUE_MAX, "pattern": LABEL_VALUE_PATTERN},
    )
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to tolerate."
    )

    @field_validator("key")
    @classmethod
    def _label_key(cls, value: str | None) -> str | None:
        if value and (problem := label_key_problem(value)):
            raise ValueError(problem)
        return value

    @field_validator("value")
    @classmethod
    def _label_value(cls, value: str | None) -> str | None:
        if value is not None and (problem := label_value_problem(value)):
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _shape(self) -> Toleration:
        if self.operator == "Exists" and self.value:
            raise ValueError("a toleration with operator Exists must not have a value")
        if not self.key and self.operator != "Exists":
            raise ValueError(
                "a toleration without a key must have operator Exists (it then matches every "
                "taint); operator Equal, the default, needs a key"
            )
        return self


Quantity = Annotated[str, Field(json_schema_extra={"pattern": QUANTITY_PATTERN})]
LabelValue = Annotated[
    str, Field(json_schema_extra={"maxLength": LABEL_VALUE_MAX, "pattern": LABEL_VALUE_PATTERN})
]


class ResourcesSpec(ApiModel):
    """What the training and benchmark pods ask for. GPU resource name, node selector and
    tolerations default to the operator's configuration."""

    gpus: int = Field(
        default=1,
        strict=True,
        ge=0,
        json_schema_extra={"maximum": 1},
        description="GPUs per pod: 1, or 0 to run on CPU nodes (the trainer is one process "
        "on one GPU; multi-GPU training is not supported yet).",
    )

    @field_validator("gpus")
    @classmethod
    def _one_gpu(cls, value: int) -> int:
        if value > 1:
            raise ValueError(
                f"{value} GPUs: multi-GPU training is not supported yet (the trainer is one "
                "process on one GPU); set 1, or 0 for CPU nodes"
            )
        return value

    cpu: Quantity | None = Field(
        default=None,
        description="CPU request and limit, a Kubernetes quantity greater than 0, e.g. '8' "
        "or 500m.",
    )
    memory: Quantity | None = Field(
        default=None,
        description="Memory request and limit, a Kubernetes quantity of whole bytes greater "
        "than 0, e.g. 64Gi (not 64GB).",
    )
    shm_size: Quantity | None = Field(
        default=None,
        description="Size of the /dev/shm memory volume, a Kubernetes quantity of whole bytes "
        "greater than 0, e.g. 16Gi.",
    )
    node_selector: dict[str, LabelValue] | None = Field(
        default=None,
        description="Replaces the operator's node selector for this job: label keys "
        "([prefix/]name) to label values.",
    )
    tolerations: list[Toleration] | None = Field(
        default=None,
        max_length=MAX_TOLERATIONS,
        description="Replaces the operator's tolerations for this job "
        f"(at most {MAX_TOLERATIONS}).",
    )
    active_deadline_seconds: int | None = Field(
        default=None,
        strict=True,
        ge=60,
        le=31_536_000,
        description="Fail the training Job after this many seconds, 60..31536000 (a year).",
    )

    @field_validator("cpu")
    @classmethod
    def _cpu(cls, value: str | None) -> str | None:
        if value is not None and (problem := quantity_problem(value)):
            raise ValueError(problem)
        return value

    @field_validator("memory", "shm_size")
    @classmethod
    def _bytes(cls, value: str | None) -> str | None:
        if value is not None and (problem := quantity_problem(value, whole=True)):
            raise ValueError(problem)
        return value

    @field_validator("node_selector")
    @classmethod
    def _labels(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for key, label in (value or {}).items():
            if problem := label_key_problem(key) or label_value_problem(label):
                raise ValueError(problem)
        return value


class SlaProfile(ApiModel):
    """A latency limit for one kind of generation."""

    name: str = Field(min_length=1, description="Profile name, e.g. question or answer.")
    max_new_tokens: int = Field(
        strict=True, ge=1, le=32768, description="Tokens generated per sample, 1..32768."
    )
    max_latency_seconds: float = Field(
        strict=True,
        allow_inf_nan=False,
        gt=0,
        le=86400,
        description="Limit on the chosen percentile of end-to-end latency, in seconds "
        "(at most a day).",
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

    samples: int = Field(
        default=20,
        strict=True,
        ge=1,
        le=MAX_SAMPLES,
        description=f"Measured samples per profile, 1..{MAX_SAMPLES} (enough for a p99).",
    )
    max_samples: int = Field(
        default=60,
        strict=True,
        ge=1,
        le=MAX_SAMPLES,
        description="Most measured samples per profile when the first `samples` leave the "
        f"verdict open (see confidence), 1..{MAX_SAMPLES}; below `samples` it is `samples`.",
    )
    confidence: float = Field(
        default=0.95,
        strict=True,
        allow_inf_nan=False,
        gt=0.5,
        lt=1,
        description="Confidence of the interval on the gated percentile, in (0.5, 1): a "
        "profile passes when the interval's upper bound is within the limit and fails when its "
        "lower bound is above it; otherwise decisionMargin, then more samples, decide.",
    )
    decision_margin: float = Field(
        default=0.25,
        strict=True,
        allow_inf_nan=False,
        ge=0,
        le=10,
        description="A percentile further than this fraction of the limit from it decides "
        "the verdict without the interval, in [0, 10]; between, samples are added up to "
        "maxSamples and the verdict then rests on the measured percentile.",
    )
    warmup: int = Field(
        default=10,
        strict=True,
        ge=0,
        le=MAX_WARMUP_SAMPLES,
        description=f"Most warm-up samples per profile, not counted, 0..{MAX_WARMUP_SAMPLES}: "
        "warm-up stops once two consecutive ones differ by less than warmupTolerance.",
    )
    warmup_tolerance: float = Field(
        default=0.1,
        strict=True,
        allow_inf_nan=False,
        gt=0,
        le=1,
        description="Latency is stable when two consecutive warm-up samples differ by less "
        "than this fraction of the later one, in (0, 1].",
    )
    percentile: Literal[50, 90, 95, 99] = Field(
        default=95, description="Which latency percentile is held to the limit."
    )
    merge_adapter: bool = Field(
        default=False,
        strict=True,
        description="Merge the adapter into the base weights before measuring.",
    )
    sla: list[SlaProfile] = Field(
        default_factory=lambda: [
            SlaProfile(name="question", max_new_tokens=200, max_latency_seconds=10),
            SlaProfile(name="answer", max_new_tokens=50, max_latency_seconds=6),
        ],
        min_length=1,
        description="Latency profiles; every one must pass to promote. Default: the seed "
        "plans' two, question (200 new tokens within 10 s) and answer (50 within 6 s); an "
        "empty list is invalid (a gate with nothing to measure would pass anything).",
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


ExportFormat = Literal["adapter", "merged"]


class PromotionSpec(ApiModel):
    """When a model that passed the benchmark becomes the current one."""

    policy: Literal["auto", "manual", "none"] = Field(
        default="auto",
        description="auto promotes on a passing benchmark; manual waits for the annotation "
        'finetune.dev/approve: "<generation>" naming the generation it approves; none trains, '
        "benchmarks and gates but never promotes (the run ends Passed or Rejected; a "
        "tournament's candidates run so).",
    )
    require_improvement: bool = Field(
        default=False,
        strict=True,
        description="Also require the adapter's eval loss to beat the base model's and the "
        "currently promoted model's.",
    )
    alias: str | None = Field(
        default=None,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="The alias the model is promoted to, per namespace "
        "(models/<namespace>/<alias>/current.json); default: the preset, or the model id made "
        "a path segment. Lowercase letters, digits, '-' and '.'.",
    )
    export: list[ExportFormat] = Field(
        default_factory=lambda: list[ExportFormat](["adapter"]),
        min_length=1,
        max_length=2,
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "'adapter' in self", "message": "export must include adapter"},
                {
                    "rule": "self.all(x, self.exists_one(y, y == x))",
                    "message": "each export format may appear once",
                },
            ],
        },
        description="What promotion publishes for serving: adapter (the LoRA adapter, always "
        "published: it is what the gate measured and what a rollback points at) and merged "
        "(the base model with the adapter merged, safetensors in the Hugging Face layout, "
        "written by the benchmark stage). The model card gives vLLM and TGI commands for each.",
    )
    min_bleu: float | None = Field(
        default=None,
        strict=True,
        allow_inf_nan=False,
        ge=0,
        le=100,
        alias="minBleu",
        description="Also require the adapter's corpus BLEU (0..100, sacrebleu) on the review "
        "answers (evaluation.samples) to be at least this; a run without the figure fails it.",
    )
    min_rouge_l: float | None = Field(
        default=None,
        strict=True,
        allow_inf_nan=False,
        ge=0,
        le=1,
        alias="minRougeL",
        description="Also require the adapter's mean ROUGE-L F-measure (0..1) on the review "
        "answers to be at least this; a run without the figure fails it.",
    )

    @field_validator("export")
    @classmethod
    def _export(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("each export format may appear once")
        if "adapter" not in value:
            raise ValueError(
                "must include adapter: the adapter is what the gate measured and what a "
                "rollback points at; add merged beside it"
            )
        return value


class EvaluationSpec(ApiModel):
    """What the benchmark stage evaluates besides latency: a held-out dataset (loss,
    perplexity and bits per byte) and answers for human review (BLEU, ROUGE-L)."""

    dataset: DatasetSpec | None = Field(
        default=None,
        description="Held-out chat JSONL (same form and URI forms as spec.dataset) on which "
        "the benchmark stage measures the adapter's eval loss, perplexity and bits per byte, "
        "written to report/evaluation.json; every conversation is evaluated (validationSplit "
        "is not used). Default: the run's validation split. The same file for every run makes "
        "runs with different data or tokenizers comparable.",
    )
    samples: int = Field(
        default=8,
        strict=True,
        ge=0,
        le=64,
        description="Validation prompts (a fixed sample, drawn with training.seed) answered "
        "greedily by the base model and by the adapter, shown side by side in the report and "
        "scored against the references with BLEU and ROUGE-L, 0..64; 0 skips the answers.",
    )


class SchedulingSpec(ApiModel):
    """Admission by Kueue against a team's GPU quota."""

    queue_name: str | None = Field(
        default=None,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="Kueue LocalQueue in the job's namespace: the Jobs are created suspended "
        "with the kueue.x-k8s.io/queue-name label and run once Kueue admits them. Default: "
        "the operator's default queue, if any; none: the Jobs run at once.",
    )
    priority_class_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="PriorityClass of the pods (Kueue orders and preempts workloads by it).",
    )


class RetentionSpec(ApiModel):
    """How much of a job's history the store keeps."""

    keep_generations: int | None = Field(
        default=None,
        ge=0,
        description="Run directories (runs/<namespace>/<name>/g<N>/) of superseded "
        "generations to keep, newest first; older ones are deleted when a run settles. The "
        "current generation and every promoted one are always kept. Default: the operator's "
        "setting (FINETUNE_KEEP_GENERATIONS; locally the same variable), else all.",
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
    evaluation: EvaluationSpec = Field(
        default_factory=EvaluationSpec, description="Held-out evaluation and review samples."
    )
    scheduling: SchedulingSpec = Field(
        default_factory=SchedulingSpec, description="Queueing (Kueue) and priority."
    )
    retention: RetentionSpec = Field(
        default_factory=RetentionSpec, description="What the store keeps of earlier runs."
    )

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
            packing=t.packing,
            dataset=self.dataset,
            benchmark=self.benchmark,
            promotion=self.promotion,
            retention=self.retention,
            evaluation=self.evaluation,
        )


def check_uri(uri: str) -> None:
    """Reject URI schemes we cannot read (http://, gs://, ...) and s3:// URIs that name no
    object or a bucket S3 would refuse. Plain paths are local files."""
    if "://" in uri and not uri.startswith(DATASET_SCHEMES):
        scheme = uri.split("://", 1)[0]
        shown = f"{scheme}://" if re.fullmatch(r"[A-Za-z][-+.A-Za-z0-9]*", scheme) else repr(uri)
        raise ValueError(
            f"unsupported URI scheme {shown}; use s3://bucket/key, file:///path or a relative path"
        )
    if uri.startswith("s3://") and (problem := s3_object_problem(uri)):
        raise ValueError(problem)


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
    packing: bool = True  # absent from config.json written before it existed
    dataset: DatasetSpec
    benchmark: BenchmarkSpec
    promotion: PromotionSpec
    retention: RetentionSpec = Field(default_factory=RetentionSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)


class RunConfig(ApiModel):
    """config.json in a run directory: who the run is and what it runs."""

    namespace: str
    name: str
    generation: int = Field(ge=1)
    uid: str | None = Field(
        default=None,
        description="The object the run belongs to (metadata.uid; a local job's own id): a "
        "run directory is only ever read for the object that wrote it.",
    )
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
    "Passed",
    "Rejected",
    "Failed",
]
TERMINAL_PHASES: frozenset[str] = frozenset({"Promoted", "Passed", "Rejected", "Failed"})
"""The run ended: only a new generation (a spec change) starts another."""
ACTIVE_PHASES: frozenset[str] = frozenset({"Validating", "Pending", "Training", "Benchmarking"})
"""A stage is starting or running: the Reconciling condition is True."""
SETTLED_PHASES: frozenset[str] = TERMINAL_PHASES | {"AwaitingApproval"}
"""Nothing changes without a person (an approval, a spec change): no polling."""


class Reason:
    """Every reason a condition, an Event or error.json carries (CamelCase), in one place."""

    RUN_STARTED = "RunStarted"
    RESUMED = "Resumed"
    SLOW_LORA_PATH = "SlowLoraPath"
    INVALID_SPEC = "InvalidSpec"
    DATASET_NOT_FOUND = "DatasetNotFound"
    JOB_CREATED = "JobCreated"
    TRAINING_STARTED = "TrainingStarted"
    BENCHMARK_STARTED = "BenchmarkStarted"
    REPORT_MISSING = "ReportMissing"
    AWAITING_APPROVAL = "AwaitingApproval"
    PROMOTED = "Promoted"
    PASSED = "Passed"
    PROMOTION_FAILED = "PromotionFailed"
    JOB_DELETED = "JobDeleted"
    JOB_FAILED = "JobFailed"
    JOB_REJECTED = "JobRejected"
    STAGE_FAILED = "StageFailed"
    STAGE_EXITED = "StageExited"
    INTERRUPTED = "Interrupted"
    QUEUED = "Queued"
    INSUFFICIENT_GPU_MEMORY = "InsufficientGPUMemory"
    NO_MEMORY_ESTIMATE = "NoMemoryEstimate"
    ADMITTED = "Admitted"
    RETRYING = "Retrying"
    INVALID_APPROVAL = "InvalidApproval"
    REBENCHMARK_STARTED = "RebenchmarkStarted"
    INVALID_REBENCHMARK = "InvalidRebenchmark"
    INVALID_RUN_FILE = "InvalidRunFile"
    NON_FINITE_LOSS = "NonFiniteLoss"
    # The gate's verdicts.
    SLA_MET = "SlaMet"
    SLA_MISSED = "SlaMissed"
    MISSING_METRICS = "MissingMetrics"
    NO_IMPROVEMENT = "NoImprovement"
    REVIEW_SCORES_LOW = "ReviewScoresLow"
    # error.json reasons the stages write.
    INVALID_CONFIG = "InvalidConfig"
    INVALID_DATASET = "InvalidDataset"
    TRAINING_FAILED = "TrainingFailed"


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
    dataset_etag: str | None = Field(
        default=None, description="The object store's ETag of the dataset (s3:// datasets)."
    )
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
    passed: bool | None = Field(default=None, description="The profile's verdict.")
    lower_bound: float | None = Field(
        default=None, description="Lower confidence bound of the gated percentile."
    )
    upper_bound: float | None = Field(
        default=None, description="Upper confidence bound of the gated percentile."
    )
    warmups: int | None = Field(default=None, description="Warm-up samples that ran.")
    verdict_basis: Literal["interval", "margin", "pointEstimate"] | None = Field(
        default=None,
        description="What decided the verdict: the confidence interval, the margin from the "
        "limit, or the measured percentile after maxSamples.",
    )


class BenchmarkReport(StatusModel):
    """report/benchmark.json; a summary of it is copied into the status."""

    passed: bool = Field(description="Every profile met its limit (and any quality gate).")
    percentile: int | None = Field(default=None, description="The percentile held to the limits.")
    confidence: float | None = Field(
        default=None, description="Confidence of the profiles' bounds."
    )
    interval_method: str | None = Field(
        default=None,
        description="How the bounds were computed: tolerance-hull (the widest of normal, "
        "lognormal and shifted-lognormal tolerance-factor bounds).",
    )
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


class ReviewAnswer(StatusModel):
    """One validation prompt answered by the base model and by the adapter."""

    prompt: str = Field(description="The last user turn of the prompt.")
    reference: str = Field(description="The dataset's own answer.")
    base: str = Field(description="The base model's greedy answer (adapter disabled).")
    adapter: str = Field(description="The adapter's greedy answer.")


class EvaluationReport(StatusModel):
    """report/evaluation.json, written by the benchmark stage: the adapter on held-out data,
    and the review answers with their text-overlap scores against the references."""

    dataset: str = Field(
        description="The URI evaluated (evaluation.dataset), or 'validation split'."
    )
    eval_loss: float | None = Field(
        default=None, description="Mean NLL per assistant token (nats)."
    )
    perplexity: float | None = Field(default=None, description="exp(evalLoss).")
    bits_per_byte: float | None = Field(
        default=None,
        description="Total NLL of the assistant tokens in bits over the UTF-8 bytes of their "
        "text: comparable across tokenizers.",
    )
    base_bleu: float | None = Field(
        default=None, description="Corpus BLEU (0..100) of the base model's review answers."
    )
    adapter_bleu: float | None = Field(
        default=None, description="Corpus BLEU (0..100) of the adapter's review answers."
    )
    base_rouge_l: float | None = Field(
        default=None, description="Mean ROUGE-L F (0..1) of the base model's review answers."
    )
    adapter_rouge_l: float | None = Field(
        default=None, description="Mean ROUGE-L F (0..1) of the adapter's review answers."
    )
    answers: list[ReviewAnswer] = Field(
        default_factory=list, description="The review answers, side by side."
    )


class EvaluationSummary(StatusModel):
    """report/evaluation.json's figures, copied into the status: bits per byte on the
    evaluated dataset and the review answers' scores against the references (the answers
    themselves stay in the report)."""

    samples: int | None = Field(default=None, description="Review answers scored.")
    adapter_bleu: float | None = Field(default=None, description="Adapter's corpus BLEU.")
    base_bleu: float | None = Field(default=None, description="Base model's corpus BLEU.")
    adapter_rouge_l: float | None = Field(default=None, description="Adapter's ROUGE-L F.")
    base_rouge_l: float | None = Field(default=None, description="Base model's ROUGE-L F.")
    bits_per_byte: float | None = Field(
        default=None, description="Adapter's bits per byte on the evaluated dataset."
    )

    @classmethod
    def of(cls, report: EvaluationReport) -> EvaluationSummary:
        return cls(
            samples=len(report.answers),
            adapter_bleu=report.adapter_bleu,
            base_bleu=report.base_bleu,
            adapter_rouge_l=report.adapter_rouge_l,
            base_rouge_l=report.base_rouge_l,
            bits_per_byte=report.bits_per_byte,
        )


class Artifacts(StatusModel):
    """Where the run's outputs are in the store."""

    run: str | None = Field(default=None, description="The run directory.")
    adapter: str | None = Field(default=None, description="The trained LoRA adapter.")
    report: str | None = Field(default=None, description="The HTML benchmark report.")
    merged: str | None = Field(
        default=None, description="The merged model (promotion.export: merged)."
    )
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


class Cost(StatusModel):
    """GPU time the run's stages held, and what it costs at the operator's price."""

    gpu_hours: float = Field(default=0.0, description="GPU-hours of the finished stages.")
    training_gpu_hours: float = Field(default=0.0, description="Of which training.")
    benchmark_gpu_hours: float = Field(
        default=0.0, description="Of which benchmarking (every round)."
    )
    projected_gpu_hours: float | None = Field(
        default=None,
        description="While training: the finished stages plus the training stage's elapsed "
        "time and its progress ETA.",
    )
    estimated_cost: float = Field(default=0.0, description="gpuHours times the price.")
    projected_cost: float | None = Field(
        default=None, description="projectedGpuHours times the price."
    )
    price_per_gpu_hour: float = Field(default=0.0, description="The operator's price.")
    currency: str = Field(default="USD", description="The price's currency.")
    stages: dict[str, float] = Field(
        default_factory=dict,
        description="GPU-hours per finished stage (Job name): kept after the Job is gone.",
    )


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
    evaluation: EvaluationSummary | None = Field(
        default=None,
        description="Bits per byte on the evaluated dataset, and BLEU and ROUGE-L of the "
        "review answers (base model and adapter) against the references, from "
        "report/evaluation.json.",
    )
    artifacts: Artifacts | None = Field(default=None, description="Artifact URIs.")
    promoted_model: str | None = Field(default=None, description="URI of the promoted copy.")
    gpu_memory_gib: float | None = Field(
        default=None,
        description="Estimated peak GPU memory of the training run (GiB), checked against "
        "one GPU's memory before any pod is created.",
    )
    approved_generation: int | None = Field(
        default=None,
        description="The generation the finetune.dev/approve annotation approved (manual policy).",
    )
    sla: str | None = Field(default=None, description="SLA verdict for printing: Passed or Failed.")
    benchmark_round: int | None = Field(
        default=None,
        description="Which benchmark round the benchmark section reports: 1, then one more "
        'for each finetune.dev/rebenchmark: "<generation>" request served.',
    )
    rebenchmark_request: str | None = Field(
        default=None,
        description="The finetune.dev/rebenchmark annotation value last served (so a value "
        "starts one round only).",
    )
    cost: Cost | None = Field(default=None, description="GPU-hours and their cost.")
    started_at: str | None = Field(default=None, description="When the current run started.")
    runs: list[RunRecord] = Field(
        default_factory=list, description="Earlier runs, newest first (5)."
    )
