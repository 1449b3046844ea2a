"""The LoRA adapter: which modules it may target, and wrapping a loaded model with one.

unsloth: its own get_peft_model, with its gradient checkpointing (a lora_dropout other than
0 puts it on a slower path, which is logged). transformers: peft's get_peft_model.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from finetune_core.api import ResolvedSpec
from finetune_trainer.modeling import LoadedModel
from finetune_trainer.plan import peft_targets, short_names, unknown_target_modules
from finetune_trainer.stage import invalid_input

log = logging.getLogger(__name__)


def adaptable_modules(model: Any) -> list[str]:
    """Full names of the modules LoRA can adapt (linear and embedding layers, 4-bit ones
    included: bitsandbytes' layers subclass torch.nn.Linear)."""
    kinds = (torch.nn.Linear, torch.nn.Embedding)
    return [
        name
        for name, module in model.named_modules()
        if name and (isinstance(module, kinds) or type(module).__name__ == "Conv1D")
    ]


def check_target_modules(loaded: LoadedModel, spec: ResolvedSpec) -> None:
    """An input failure (UnknownTargetModules) naming the targets the model does not have."""
    modules = adaptable_modules(loaded.model)
    unknown = unknown_target_modules(spec.target_modules, modules)
    if unknown:
        raise invalid_input(
            "UnknownTargetModules",
            f"lora.targetModules: {', '.join(unknown)} not found in {spec.model_id}; its "
            f"modules are: {', '.join(short_names(modules))}",
        )


def lora_settings(spec: ResolvedSpec) -> dict[str, Any]:
    """The adapter as the spec describes it, in the keywords peft and unsloth share."""
    return {
        "r": spec.lora_r,
        "lora_alpha": spec.lora_alpha,
        "lora_dropout": spec.lora_dropout,
        "target_modules": peft_targets(spec.target_modules),
        "bias": "none",
    }


def add_lora(loaded: LoadedModel, spec: ResolvedSpec) -> Any:
    """The model wrapped with a fresh LoRA adapter from the resolved spec."""
    if loaded.backend == "unsloth":
        return _add_unsloth_lora(loaded, spec)
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(**lora_settings(spec), task_type="CAUSAL_LM")
    torch.manual_seed(spec.seed)  # the adapter's initial weights
    return get_peft_model(loaded.model, config)


def _add_unsloth_lora(loaded: LoadedModel, spec: ResolvedSpec) -> Any:
    from unsloth import FastLanguageModel

    if spec.lora_dropout != 0:
        log.warning(
            "lora dropout %.2f: unsloth uses its slower path; set lora.dropout: 0 for its "
            "fast kernels",
            spec.lora_dropout,
        )
    return FastLanguageModel.get_peft_model(
        loaded.model,
        **lora_settings(spec),
        use_gradient_checkpointing="unsloth",
        random_state=spec.seed,
        max_seq_length=spec.max_seq_length,
    )
