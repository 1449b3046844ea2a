"""How much GPU memory a training run needs, estimated from the model's shape before any
pod is created, so that a job that cannot fit fails at once instead of after an image pull
and a model download.

The trainer is one process on one GPU. Its peak is the sum of:
- weights: 4-bit (NF4 with its block constants, about 0.53 bytes a parameter) or 2 bytes
  (bf16/fp16) or 4 (fp32) per parameter; the embeddings and the output layer stay 16-bit;
- the LoRA adapter: its parameters in fp32 with their gradients and the optimizer's state
  (AdamW: two fp32 moments; 8-bit AdamW: two bytes);
- activations with gradient checkpointing whose checkpoints are offloaded to host memory
  (unsloth's mode), so one layer's working set (batchSize x maxSeqLength x (4 hidden + 2
  intermediate) in 16 bit) and a chunked cross-entropy (at most 32768 vocabulary entries of
  fp32 logits at a time) stay on the GPU;
- a fixed runtime overhead (the GPU runtime's context, the allocator's slack): 2 GiB.
"""

from __future__ import annotations

from dataclasses import dataclass

from finetune_core.api import ResolvedSpec
from finetune_core.presets import PRESETS, SHAPES, ModelShape

GIB = 1 << 30
RUNTIME_OVERHEAD = 2 * GIB
NF4_BYTES = 0.53
LOGITS_CHUNK = 32768
PRECISION_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
# Per LoRA parameter: the fp32 weight and its gradient, then the optimizer's two moments.
LORA_BYTES = {"adamw_8bit": 4 + 4 + 2}
LORA_BYTES_DEFAULT = 4 + 4 + 8


@dataclass(frozen=True)
class MemoryEstimate:
    """The estimated peak, in bytes, by part."""

    weights: int
    adapter: int
    activations: int
    overhead: int = RUNTIME_OVERHEAD

    @property
    def total(self) -> int:
        return self.weights + self.adapter + self.activations + self.overhead

    def describe(self) -> str:
        parts = (
            f"weights {gib(self.weights)}, LoRA with optimizer {gib(self.adapter)}, "
            f"activations {gib(self.activations)}, runtime {gib(self.overhead)}"
        )
        return f"{gib(self.total)} ({parts})"


def gib(size: float) -> str:
    return f"{size / GIB:.1f} GiB"


def shape_of(spec: ResolvedSpec) -> ModelShape | None:
    """The model's shape, where known: a preset's (while its own model is trained)."""
    if spec.preset and PRESETS[spec.preset].model_id == spec.model_id:
        return SHAPES.get(spec.preset)
    return None


def lora_parameters(shape: ModelShape, spec: ResolvedSpec) -> int:
    """r x (inputs + outputs) of every adapted projection, in every layer."""
    q_out = shape.heads * shape.head_dim
    kv_out = shape.kv_heads * shape.head_dim
    sizes = {
        "q_proj": (shape.hidden, q_out),
        "k_proj": (shape.hidden, kv_out),
        "v_proj": (shape.hidden, kv_out),
        "o_proj": (q_out, shape.hidden),
        "gate_proj": (shape.hidden, shape.intermediate),
        "up_proj": (shape.hidden, shape.intermediate),
        "down_proj": (shape.intermediate, shape.hidden),
    }
    per_layer = sum(sum(sizes[m]) for m in spec.target_modules if m in sizes)
    return spec.lora_r * per_layer * shape.layers


def estimate(spec: ResolvedSpec, shape: ModelShape) -> MemoryEstimate:
    embedding_parameters = 2 * shape.vocab * shape.hidden  # input embeddings and output layer
    body = shape.parameters - embedding_parameters
    per_parameter = NF4_BYTES if spec.load_in_4bit else PRECISION_BYTES[spec.precision]
    weights = body * per_parameter + embedding_parameters * 2
    adapter = lora_parameters(shape, spec) * LORA_BYTES.get(spec.optimizer, LORA_BYTES_DEFAULT)
    tokens = spec.batch_size * spec.max_seq_length
    layer = tokens * (4 * shape.hidden + 2 * shape.intermediate) * 2
    logits = tokens * min(shape.vocab, LOGITS_CHUNK) * 4
    return MemoryEstimate(int(weights), int(adapter), int(layer + logits))
