"""`finetune train --run URI`: the training pod's program, a recipe read top to bottom.

1. Set up: read config.json; fetch the dataset and validate every line (before any model is
   loaded); choose the backend (FINETUNE_BACKEND, see backend.py); encode the conversations
   with the model's chat template and split them; load the model, check the LoRA target
   modules and add the adapter; find the newest complete checkpoint to resume from.
2. Evaluate the base model on the validation split (once: a resumed run reads it back from
   its checkpoint).
3. Train, uploading checkpoints in the background. SIGTERM saves a checkpoint and stops.
4. Evaluate the adapter and publish: the adapter, the loss report, then metrics.json.

Exit codes (finetune_core.exit_codes): EXIT_OK done; EXIT_INVALID_INPUT bad input, retrying
cannot help; EXIT_TERMINATED stopped by SIGTERM after saving a checkpoint (the Job's retry
resumes); EXIT_FAILED any other failure. Every failure also writes error.json
{stage: "train", reason, message}.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune_core.api import Metrics, ResolvedSpec
from finetune_core.exit_codes import EXIT_INVALID_INPUT, EXIT_OK, EXIT_TERMINATED
from finetune_core.layout import RunPaths
from finetune_core.store import ArtifactStore, open_run
from finetune_trainer import data, losscurve, plan, stage
from finetune_trainer.checkpoints import (
    BASE_EVAL_LOSS,
    CheckpointSync,
    LocalCheckpoint,
    ResumableState,
    read_state,
)
from finetune_trainer.data import DatasetError
from finetune_trainer.logs import setup_logging
from finetune_trainer.stage import PodStage, StageFailure, invalid_input
from finetune_trainer.uploads import BackgroundUploader

if TYPE_CHECKING:
    from transformers import Trainer

    from finetune_trainer.encoding import EncodedSplits
    from finetune_trainer.modeling import LoadedModel
    from finetune_trainer.training import StopOnSignal

log = logging.getLogger("finetune.train")

STAGE: PodStage = "train"
UPLOAD_WAIT_ENV = "FINETUNE_UPLOAD_WAIT_SECONDS"  # at the end: wait for checkpoint uploads
TERM_WAIT_ENV = "FINETUNE_TERM_UPLOAD_SECONDS"  # after SIGTERM: within the grace period
WORKDIR_ENV = "FINETUNE_WORKDIR"


def main(run_uri: str) -> int:
    """Train the run at `run_uri`; the process's exit code."""
    # Before torch loads OpenMP: threads that spin while waiting for work burn the CPUs that
    # the other threads need when the node is shared or CPU-limited (measured on 2 busy
    # cores: a forward pass 15x slower with spinning threads than with sleeping ones).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    setup_logging()
    try:
        store, prefix = open_run(run_uri)
        paths = RunPaths.from_prefix(prefix)
    except ValueError as error:
        log.error("%s", error)
        return EXIT_INVALID_INPUT
    try:
        return run(store, paths)
    except StageFailure as failure:
        return stage.report(store, paths, STAGE, failure)
    except DatasetError as error:
        return stage.report(store, paths, STAGE, invalid_input("InvalidDataset", str(error)))
    except Exception as error:
        log.exception("training failed")
        return stage.report(store, paths, STAGE, stage.unexpected(error, "TrainingFailed"))


def run(store: ArtifactStore, paths: RunPaths) -> int:
    """The recipe: set up, evaluate the base model, train, evaluate and publish."""
    spec = stage.read_config(store, paths).spec
    log.info("run %s: %s on %s", store.uri(paths.prefix), spec.model_id, spec.dataset.uri)
    with scratch_directory() as work:
        session = set_up(store, paths, spec, work)
        evaluate_base_model(session)
        if not train(session):
            return EXIT_TERMINATED
        metrics = evaluate_adapter(session)
        publish(session, metrics)
    return EXIT_OK


# ---------------------------------------------------------------- 1. set up


@dataclass
class TrainingSession:
    """Everything the recipe's later steps use, made by `set_up`."""

    store: ArtifactStore
    paths: RunPaths
    spec: ResolvedSpec
    work: Path
    splits: EncodedSplits
    dataset_sha256: str
    dataset_etag: str | None
    steps: plan.StepPlan
    loaded: LoadedModel
    model: Any  # the model with its LoRA adapter
    trainer: Trainer
    state: ResumableState
    resume: LocalCheckpoint | None
    stop: StopOnSignal
    uploader: BackgroundUploader


@contextlib.contextmanager
def scratch_directory() -> Iterator[Path]:
    """A temporary working directory (under FINETUNE_WORKDIR when set), removed at the end."""
    with tempfile.TemporaryDirectory(
        prefix="finetune-train-", dir=os.environ.get(WORKDIR_ENV)
    ) as scratch:
        yield Path(scratch)


def set_up(
    store: ArtifactStore, paths: RunPaths, spec: ResolvedSpec, work: Path
) -> TrainingSession:
    """Dataset, backend, encoded splits, model with adapter, and a trainer ready to resume."""
    dataset = data.fetch(spec.dataset.uri, work / "dataset")
    digest = data.sha256_file(dataset)
    if spec.dataset.sha256 and digest != spec.dataset.sha256:
        raise invalid_input(
            "DatasetChanged",
            f"{spec.dataset.uri} has sha256 {digest}, but spec.dataset.sha256 pins "
            f"{spec.dataset.sha256}: the dataset was rewritten at the same URI",
        )
    numbered = data.read_numbered(dataset)
    log.info("dataset %s: %d conversations, every line valid", dataset.name, len(numbered))
    # Only now the heavy imports: select_backend imports unsloth, where used, before them.
    from finetune_trainer.backend import select_backend

    select_backend()
    splits = encode(spec, dataset.name, numbered)
    steps = plan_steps(spec, splits)
    loaded, model = load_model_with_adapter(spec)
    uploader = BackgroundUploader()
    sync = CheckpointSync(store, paths, uploader, work / "staging", spec.keep_checkpoints)
    resume = sync.download_newest(work / "trainer")
    if resume:
        log.info("resuming from checkpoint step-%d", resume.step, extra={"step": resume.step})
    state = ResumableState(read_state(resume.path) if resume else {})
    trainer, stop = build_trainer(store, paths, spec, work, splits, steps, loaded, model)
    add_training_callbacks(trainer, sync, state, uploader, store, paths)
    return TrainingSession(
        store=store,
        paths=paths,
        spec=spec,
        work=work,
        splits=splits,
        dataset_sha256=digest,
        dataset_etag=data.etag(spec.dataset.uri),
        steps=steps,
        loaded=loaded,
        model=model,
        trainer=trainer,
        state=state,
        resume=resume,
        stop=stop,
        uploader=uploader,
    )


def encode(
    spec: ResolvedSpec, source: str, numbered: list[tuple[int, data.Conversation]]
) -> EncodedSplits:
    """Tokenize with the chat template (every line checked against maxSeqLength) and split."""
    from finetune_trainer.encoding import encode_splits
    from finetune_trainer.modeling import load_tokenizer

    splits = encode_splits(
        load_tokenizer(spec),
        numbered,
        spec.max_seq_length,
        spec.dataset.too_long,
        (spec.dataset.validation_split, spec.seed),
        source=source,
    )
    if splits.truncated:
        log.warning(
            "%d conversations cut to maxSeqLength %d", splits.truncated, spec.max_seq_length
        )
    return splits


def plan_steps(spec: ResolvedSpec, splits: EncodedSplits) -> plan.StepPlan:
    steps = plan.plan_steps(
        len(splits.train),
        spec.batch_size,
        spec.gradient_accumulation_steps,
        spec.epochs,
        spec.max_steps,
    )
    log.info(
        "%d training and %d validation conversations; %d steps (%d per epoch)",
        len(splits.train),
        len(splits.eval),
        steps.total_steps,
        steps.steps_per_epoch,
    )
    return steps


def load_model_with_adapter(spec: ResolvedSpec) -> tuple[LoadedModel, Any]:
    """The base model for training, target modules checked, with a fresh LoRA adapter."""
    from finetune_trainer.lora import add_lora, check_target_modules
    from finetune_trainer.modeling import load_base

    loaded = load_base(spec, training=True)
    check_target_modules(loaded, spec)
    return loaded, add_lora(loaded, spec)


def build_trainer(
    store: ArtifactStore,
    paths: RunPaths,
    spec: ResolvedSpec,
    work: Path,
    splits: EncodedSplits,
    steps: plan.StepPlan,
    loaded: LoadedModel,
    model: Any,
) -> tuple[Trainer, StopOnSignal]:
    """transformers' Trainer (unsloth's patched one with unsloth) with a SIGTERM handler."""
    from finetune_trainer import training
    from finetune_trainer.backend import bitsandbytes_usable

    optimizer, note = plan.choose_optimizer(spec.optimizer, bitsandbytes_usable())
    if note:
        log.warning("%s", note)
    stop = training.StopOnSignal()
    stop.install()
    arguments = training.training_arguments(spec, steps, work / "trainer", optimizer, loaded)
    trainer = training.build_trainer(
        loaded,
        model,
        arguments,
        splits.train,
        splits.eval,
        [stop],
        packing=training.packs_rows(spec, loaded),
    )
    log.info("batches %s", "packed" if training.packs_rows(spec, loaded) else "padded")
    return trainer, stop


def add_training_callbacks(
    trainer: Trainer,
    sync: CheckpointSync,
    state: ResumableState,
    uploader: BackgroundUploader,
    store: ArtifactStore,
    paths: RunPaths,
) -> None:
    """Checkpoints go to the store with our state; progress.json goes there every few s."""
    from finetune_trainer import training
    from finetune_trainer.progress import ProgressReporter, progress_interval

    def publish_progress(progress: dict[str, Any]) -> None:
        uploader.submit(
            "progress.json", lambda: store.put_json(paths.progress, progress), slot="progress"
        )

    trainer.add_callback(training.StopOnNonFiniteLoss())
    trainer.add_callback(training.UploadCheckpoints(sync, state.snapshot))
    trainer.add_callback(ProgressReporter(publish_progress, progress_interval()))


# ---------------------------------------------------------------- 2. base evaluation


def evaluate_base_model(session: TrainingSession) -> None:
    """The base model's eval loss: the adapter starts as a no-op, so evaluating the model
    before its first step measures the base. A resumed run reads it from its checkpoint."""
    from finetune_trainer.training import check_finite_loss

    loss = session.state.get(BASE_EVAL_LOSS)
    if loss is None:
        loss = float(session.trainer.evaluate()["eval_loss"])
    check_finite_loss("base model's eval loss", loss, 0)
    session.state.set(BASE_EVAL_LOSS, loss)
    log.info("base model eval loss %.4f", loss, extra={"baseEvalLoss": loss})


# ---------------------------------------------------------------- 3. train


def train(session: TrainingSession) -> bool:
    """Train to the planned step; False when SIGTERM stopped it first (after a checkpoint)."""
    trainer = session.trainer
    session.state.start_training_clock()
    trainer.train(resume_from_checkpoint=str(session.resume.path) if session.resume else None)
    if session.stop.requested and trainer.state.global_step < session.steps.total_steps:
        done = session.uploader.close(_seconds(TERM_WAIT_ENV, 20.0))
        log.warning(
            "stopped at step %d by SIGTERM; checkpoint %s",
            trainer.state.global_step,
            "uploaded" if done else "upload unfinished",
        )
        return False
    return True


def _seconds(env: str, default: float) -> float:
    value = os.environ.get(env)
    return float(value) if value else default


# ---------------------------------------------------------------- 4. evaluate and publish


def evaluate_adapter(session: TrainingSession) -> Metrics:
    """metrics.json's content: the adapter's eval loss and what the run measured."""
    from finetune_trainer.training import check_finite_loss, final_eval_loss

    trainer, splits = session.trainer, session.splits
    base_eval_loss = session.state.get(BASE_EVAL_LOSS)
    eval_loss = final_eval_loss(trainer)
    check_finite_loss("eval loss", eval_loss, trainer.state.global_step)
    history = losscurve.loss_history(trainer.state.log_history, base_eval_loss)
    metrics = Metrics(
        train_loss=losscurve.final_train_loss(history, session.steps.steps_per_epoch),
        eval_loss=eval_loss,
        perplexity=math.exp(min(eval_loss, 700.0)),
        base_eval_loss=base_eval_loss,
        train_runtime_seconds=round(session.state.train_seconds(), 2),
        train_tokens=int(trainer.state.num_input_tokens_seen or 0),
        dataset_sha256=session.dataset_sha256,
        dataset_etag=session.dataset_etag,
        train_rows=len(splits.train),
        eval_rows=len(splits.eval),
        truncated_rows=splits.truncated,
        backend=session.loaded.backend,
    )
    log.info(
        "eval loss %.4f (base %.4f), perplexity %.2f",
        eval_loss,
        base_eval_loss or math.nan,
        metrics.perplexity or 0.0,
        extra={"metrics": metrics.to_wire()},
    )
    return metrics


def publish(session: TrainingSession, metrics: Metrics) -> None:
    """Upload the adapter (PEFT format, with tokenizer and chat template), the loss report,
    then metrics.json: a reader that sees the metrics finds everything else in place."""
    store, paths, spec, work = session.store, session.paths, session.spec, session.work
    if not session.uploader.close(_seconds(UPLOAD_WAIT_ENV, 600.0)):
        log.error("some checkpoint uploads did not finish; the adapter is uploaded regardless")
    adapter_dir = work / "adapter"
    # Name the model id, not our local cache path; embeddings are not trained, so there is
    # no need to compare them with the hub's (save_embedding_layers="auto" would fetch it).
    session.model.peft_config["default"].base_model_name_or_path = spec.model_id
    session.model.save_pretrained(str(adapter_dir), save_embedding_layers=False)
    session.loaded.tokenizer.save_pretrained(str(adapter_dir))
    history = losscurve.loss_history(
        session.trainer.state.log_history, session.state.get(BASE_EVAL_LOSS)
    )
    chart = work / "loss.png"
    losscurve.plot_loss(history, chart, f"{paths.name} g{paths.generation}: {spec.model_id}")

    store.upload_dir(paths.adapter, adapter_dir)
    store.put_json(f"{paths.report}/loss_history.json", history)
    store.put_file(f"{paths.report}/loss.png", chart)
    store.put_json(paths.metrics, metrics.to_wire())
    log.info("adapter uploaded to %s", store.uri(paths.adapter))
