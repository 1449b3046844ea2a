"""A NaN or infinite loss ends training at once, naming the step, and retrying cannot help."""

from __future__ import annotations

import math

import pytest
from transformers import TrainerControl, TrainerState, TrainingArguments

from finetune_core.exit_codes import EXIT_INVALID_INPUT
from finetune_trainer.stage import StageFailure
from finetune_trainer.training import StopOnNonFiniteLoss


@pytest.mark.parametrize(("key", "value"), [("loss", math.nan), ("eval_loss", math.inf)])
def test_a_non_finite_loss_stops_the_run_naming_the_step(key: str, value: float) -> None:
    state = TrainerState()
    state.global_step = 37
    with pytest.raises(StageFailure) as stopped:
        StopOnNonFiniteLoss().on_log(
            TrainingArguments(output_dir="unused", report_to=[]),
            state,
            TrainerControl(),
            logs={key: value, "learning_rate": 1e-4},
        )
    assert stopped.value.reason == "NonFiniteLoss"
    assert stopped.value.exit_code == EXIT_INVALID_INPUT
    assert "at step 37" in str(stopped.value)


def test_finite_losses_pass() -> None:
    StopOnNonFiniteLoss().on_log(
        TrainingArguments(output_dir="unused", report_to=[]),
        TrainerState(),
        TrainerControl(),
        logs={"loss": 1.5, "eval_loss": 1.4},
    )
