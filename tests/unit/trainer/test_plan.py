"""Decisions before training: steps, optimizer fallback, target modules."""

from __future__ import annotations

import pytest

from finetune_trainer.plan import (
    choose_optimizer,
    peft_targets,
    plan_steps,
    short_names,
    unknown_target_modules,
)


@pytest.mark.parametrize(
    ("rows", "batch", "accumulation", "epochs", "max_steps", "per_epoch", "total"),
    [
        (297, 4, 1, 1, None, 75, 75),  # the last, partial batch is a step
        (297, 4, 1, 3, None, 75, 225),
        (297, 4, 1, 3, 20, 75, 20),  # maxSteps caps the epochs
        (10, 4, 1, 1, 100, 3, 3),  # ... and never extends them
        (100, 2, 4, 2, None, 13, 26),  # 50 batches in windows of 4: 12 full + 1 partial
        (100, 2, 4, 1.5, None, 13, 20),
        (1, 8, 8, 1, None, 1, 1),
    ],
)
def test_plan_steps(
    rows: int,
    batch: int,
    accumulation: int,
    epochs: float,
    max_steps: int | None,
    per_epoch: int,
    total: int,
) -> None:
    plan = plan_steps(rows, batch, accumulation, epochs, max_steps)
    assert (plan.steps_per_epoch, plan.total_steps) == (per_epoch, total)


@pytest.mark.parametrize("name", ["adamw_8bit", "paged_adamw_8bit", "adamw_bnb_8bit", "lion_8bit"])
def test_bitsandbytes_optimizers_fall_back_without_it(name: str) -> None:
    chosen, note = choose_optimizer(name, bitsandbytes_usable=False)
    assert chosen == "adamw_torch"
    assert note is not None and name in note
    assert choose_optimizer(name, bitsandbytes_usable=True) == (name, None)


def test_other_optimizers_are_kept() -> None:
    assert choose_optimizer("adamw_torch", bitsandbytes_usable=False) == ("adamw_torch", None)
    assert choose_optimizer("adafactor", bitsandbytes_usable=False) == ("adafactor", None)


MODULES = [
    "model.embed_tokens",
    "model.layers.0.self_attn.q_proj",
    "model.layers.0.self_attn.qkv_proj",
    "model.layers.0.mlp.gate_up_proj",
    "lm_head",
]


def test_unknown_target_modules_match_like_peft() -> None:
    assert unknown_target_modules(["q_proj", "lm_head", "self_attn.qkv_proj"], MODULES) == []
    assert unknown_target_modules(["k_proj", "q_proj", "proj"], MODULES) == ["k_proj", "proj"]
    assert unknown_target_modules(["all-linear"], MODULES) == []


def test_short_names_for_the_error_message() -> None:
    assert short_names(MODULES) == ["embed_tokens", "gate_up_proj", "lm_head", "q_proj", "qkv_proj"]


def test_peft_targets_shorthand() -> None:
    assert peft_targets(["all-linear"]) == "all-linear"
    assert peft_targets(["q_proj", "v_proj"]) == ["q_proj", "v_proj"]
