"""Decisions taken before training, as pure functions: how many steps, which optimizer,
whether the LoRA target modules exist in the model."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

# transformers optimizer names that run on bitsandbytes (GPU only).
_BNB_OPTIMIZERS = {"adamw_8bit", "ademamix", "ademamix_8bit", "lion_8bit", "lion_32bit"}
FALLBACK_OPTIMIZER = "adamw_torch"
# peft's shorthand for "every linear layer but the output head".
ALL_LINEAR = "all-linear"


@dataclass(frozen=True)
class StepPlan:
    """Optimizer steps per epoch and in the whole run."""

    steps_per_epoch: int
    total_steps: int


def plan_steps(
    train_rows: int,
    batch_size: int,
    gradient_accumulation_steps: int,
    epochs: float,
    max_steps: int | None,
) -> StepPlan:
    """Steps as transformers counts them (the last, partial batch and accumulation window
    each count as one); max_steps caps the epochs, it never extends them."""
    batches = math.ceil(train_rows / batch_size)
    per_epoch = max(math.ceil(batches / gradient_accumulation_steps), 1)
    total = max(math.ceil(epochs * per_epoch), 1)
    if max_steps is not None:
        total = min(total, max_steps)
    return StepPlan(per_epoch, total)


def needs_bitsandbytes(optimizer: str) -> bool:
    return optimizer in _BNB_OPTIMIZERS or "bnb" in optimizer or optimizer.startswith("paged_")


def choose_optimizer(requested: str, bitsandbytes_usable: bool) -> tuple[str, str | None]:
    """The optimizer to run, and why it differs from the requested one (None if it doesn't)."""
    if needs_bitsandbytes(requested) and not bitsandbytes_usable:
        return FALLBACK_OPTIMIZER, (
            f"optimizer {requested} needs bitsandbytes on a GPU; using {FALLBACK_OPTIMIZER}"
        )
    return requested, None


def unknown_target_modules(targets: Iterable[str], module_names: Iterable[str]) -> list[str]:
    """Targets that match no module: as peft matches them, a target names a module whose
    full dotted name is the target or ends with '.' + target."""
    names = list(module_names)
    return [
        target
        for target in targets
        if target != ALL_LINEAR
        and not any(name == target or name.endswith("." + target) for name in names)
    ]


def short_names(module_names: Iterable[str]) -> list[str]:
    """Distinct last components of dotted module names, for an error message."""
    return sorted({name.rsplit(".", 1)[-1] for name in module_names if name})


def peft_targets(targets: list[str]) -> list[str] | str:
    """target_modules as peft takes them: its shorthand is a string, not a list item."""
    return ALL_LINEAR if targets == [ALL_LINEAR] else targets
