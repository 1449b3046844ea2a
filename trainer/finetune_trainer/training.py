"""The training loop: transformers' Trainer over pre-tokenized rows, plus our callbacks.

Why Trainer with our own tokenization rather than trl's SFTTrainer: the dataset is encoded
(and every line checked against maxSeqLength) before any model is loaded, so problems are
reported with line numbers in seconds; the loss mask covers every assistant turn whatever
the chat template (SFTTrainer's assistant-only loss needs `{% generation %}` markers that
most templates lack); and truncation is counted. Batches are packed without padding by our
own collator (packing.py, spec.training.packing), which keeps the loss mask as it is.
unsloth patches Trainer as well, so the GPU path runs the same loop.

Import this module only after `backend.select_backend()` (it imports transformers).
"""

from __future__ import annotations

import logging
import math
import signal
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from transformers import (
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.utils import logging as transformers_logging

from finetune_core.api import ResolvedSpec
from finetune_trainer.backend import compute_dtype
from finetune_trainer.checkpoints import CheckpointSync, write_state
from finetune_trainer.encoding import EncodedRow, PadCollator
from finetune_trainer.modeling import LoadedModel
from finetune_trainer.packing import PackingCollator, register_segment_attention
from finetune_trainer.plan import StepPlan
from finetune_trainer.stage import invalid_input

log = logging.getLogger(__name__)

transformers_logging.set_verbosity_warning()
transformers_logging.disable_progress_bar()


class EncodedRowDataset(torch.utils.data.Dataset[EncodedRow]):
    """Encoded conversations as a map-style dataset."""

    def __init__(self, rows: list[EncodedRow]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> EncodedRow:
        return self.rows[index]


class StopOnSignal(TrainerCallback):
    """On SIGTERM (Kubernetes stopping the pod), save a checkpoint after the current
    optimizer step and stop training; the Job's retry resumes from that checkpoint."""

    def __init__(self) -> None:
        self.requested = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        log.warning("SIGTERM: saving a checkpoint after this step, then stopping")
        self.requested = True

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.requested:
            control.should_save = True
            control.should_training_stop = True

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.requested:
            control.should_evaluate = False  # no time for it: the pod is being stopped


class StopOnNonFiniteLoss(TrainerCallback):
    """A NaN or infinite training or eval loss ends the run at once, naming the step: training
    on from there only wastes the GPU, and nothing it produced may be promoted."""

    def on_log(self, args: Any, state: TrainerState, control: Any, **kwargs: Any) -> None:
        for key in ("loss", "eval_loss"):
            value = (kwargs.get("logs") or {}).get(key)
            if value is not None:
                check_finite_loss(key.replace("_", " "), float(value), state.global_step)


def check_finite_loss(what: str, value: float, step: int) -> None:
    if not math.isfinite(value):
        raise invalid_input("NonFiniteLoss", f"the {what} is {value} at step {step}")


class UploadCheckpoints(TrainerCallback):
    """After the trainer saves a checkpoint: add our own state to it and queue its upload."""

    def __init__(self, sync: CheckpointSync, own_state: Callable[[], dict[str, float]]):
        self.sync = sync
        self.own_state = own_state

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        directory = Path(str(args.output_dir)) / f"checkpoint-{state.global_step}"
        write_state(directory, self.own_state())
        self.sync.upload_later(state.global_step, directory)
        log.info(
            "checkpoint step-%d saved; uploading in the background",
            state.global_step,
            extra={"step": state.global_step},
        )


def packs_rows(spec: ResolvedSpec, loaded: LoadedModel) -> bool:
    """Whether batches are packed (packing.py): as the spec says, except with unsloth, whose
    patched forward is not known here to keep packed conversations apart; it pads."""
    return spec.packing and loaded.backend == "transformers"


def training_arguments(
    spec: ResolvedSpec, plan: StepPlan, output_dir: Path, optimizer: str, loaded: LoadedModel
) -> TrainingArguments:
    """The resolved spec as TrainingArguments: steps capped by the plan, evaluation at each
    epoch's end, a checkpoint every saveSteps, precision from the spec on a GPU."""
    on_gpu = loaded.device != "cpu"
    dtype = compute_dtype(spec.precision)
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=spec.batch_size,
        per_device_eval_batch_size=spec.batch_size,
        gradient_accumulation_steps=spec.gradient_accumulation_steps,
        learning_rate=spec.learning_rate,
        warmup_steps=spec.warmup_steps,
        max_steps=plan.total_steps,
        optim=optimizer,
        seed=spec.seed,
        data_seed=spec.seed,
        bf16=on_gpu and dtype == torch.bfloat16,
        fp16=on_gpu and dtype == torch.float16,
        use_cpu=not on_gpu,
        logging_steps=1,
        eval_strategy="epoch",
        prediction_loss_only=True,
        save_strategy="steps",
        save_steps=spec.save_steps,
        save_total_limit=1,  # uploaded copies are staged apart; locally, the newest suffices
        # A packed row has no padding, and no attention_mask to count it by.
        include_num_input_tokens_seen="all" if packs_rows(spec, loaded) else "non_padding",
        remove_unused_columns=False,
        label_names=["labels"],
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def build_trainer(
    loaded: LoadedModel,
    model: Any,
    args: TrainingArguments,
    train_rows: list[EncodedRow],
    eval_rows: list[EncodedRow],
    callbacks: list[TrainerCallback],
    packing: bool,
) -> Trainer:
    """The Trainer over our rows. With packing, the model runs without a KV cache (with
    one, transformers ignores the conversation boundaries in position_ids) and, where it
    uses sdpa, with per-conversation sdpa (packing.py)."""
    collator: Callable[[list[EncodedRow]], dict[str, Any]]
    if packing:
        model.config.use_cache = False
        if model.config._attn_implementation == "sdpa":
            model.set_attn_implementation(register_segment_attention())
        collator = PackingCollator()
    else:
        collator = PadCollator(loaded.tokenizer.pad_token_id)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=EncodedRowDataset(train_rows),
        eval_dataset=EncodedRowDataset(eval_rows),
        data_collator=collator,
        processing_class=loaded.tokenizer,
        callbacks=callbacks,
    )
    # Our ProgressReporter replaces transformers' printing of log dicts and its tqdm bar.
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer


def final_eval_loss(trainer: Trainer) -> float:
    """The eval loss at the last step: the epoch-end evaluation's when it ran there."""
    step = trainer.state.global_step
    for entry in reversed(trainer.state.log_history):
        if "eval_loss" in entry:
            if entry.get("step") == step:
                return float(entry["eval_loss"])
            break
    return float(trainer.evaluate()["eval_loss"])
