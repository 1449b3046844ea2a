"""`finetune train --run URI`: the training pod's program.

In order: read config.json; fetch and validate the dataset (every line, before any model is
loaded); encode it with the model's tokenizer and chat template (length checks); load the
model and check the LoRA target modules; resume from the newest complete checkpoint if the
run has one; measure the base model's eval loss; train (checkpoints uploaded in the
background); evaluate; upload the adapter, the loss report and metrics.json.

Exit codes: 0 done; 3 (EXIT_INVALID_INPUT) bad input, retrying cannot help; 143 stopped by
SIGTERM after saving a checkpoint (the Job's retry resumes); 1 any other failure. Every
failure also writes error.json {stage: "train", reason, message}.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from finetune_core.api import Metrics, ResolvedSpec, RunConfig
from finetune_core.exit_codes import EXIT_INVALID_INPUT
from finetune_core.layout import ErrorReport, RunPaths
from finetune_core.store import ArtifactStore, NotFound, open_run
from finetune_trainer import data, losscurve, plan
from finetune_trainer.checkpoints import CheckpointSync, read_state
from finetune_trainer.data import Conversation, DatasetError, LineProblem
from finetune_trainer.logs import setup_logging
from finetune_trainer.uploads import BackgroundUploader

if TYPE_CHECKING:
    from finetune_trainer.encoding import EncodedRow
    from finetune_trainer.modeling import LoadedModel

log = logging.getLogger("finetune.train")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process stopped by it

UPLOAD_WAIT_ENV = "FINETUNE_UPLOAD_WAIT_SECONDS"  # at the end: wait for checkpoint uploads
TERM_WAIT_ENV = "FINETUNE_TERM_UPLOAD_SECONDS"  # after SIGTERM: within the grace period
WORKDIR_ENV = "FINETUNE_WORKDIR"


class TrainFailure(Exception):
    """A failure with its error.json reason and the exit code it ends the process with."""

    def __init__(self, reason: str, message: str, exit_code: int = EXIT_FAILURE):
        super().__init__(message)
        self.reason = reason
        self.exit_code = exit_code


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
        return _train(store, paths)
    except TrainFailure as failure:
        return _fail(store, paths, failure.reason, str(failure), failure.exit_code)
    except DatasetError as error:
        return _fail(store, paths, "InvalidDataset", str(error), EXIT_INVALID_INPUT)
    except Exception as error:
        log.exception("training failed")
        return _fail(
            store, paths, "TrainingFailed", f"{type(error).__name__}: {error}", EXIT_FAILURE
        )


def _fail(store: ArtifactStore, paths: RunPaths, reason: str, message: str, code: int) -> int:
    log.error("%s: %s", reason, message, extra={"reason": reason})
    report = ErrorReport(stage="train", reason=reason, message=message)
    try:
        store.put_json(paths.error, report.to_wire())
    except Exception as error:  # the store may be what failed
        log.error("could not write error.json: %s", error)
    return code


def _read_config(store: ArtifactStore, paths: RunPaths) -> RunConfig:
    try:
        return RunConfig.model_validate(store.get_json(paths.config))
    except NotFound:
        raise TrainFailure(
            "InvalidConfig", f"{store.uri(paths.config)} does not exist", EXIT_INVALID_INPUT
        ) from None
    except (ValidationError, ValueError) as error:
        raise TrainFailure("InvalidConfig", f"config.json: {error}", EXIT_INVALID_INPUT) from None


def _seconds(env: str, default: float) -> float:
    value = os.environ.get(env)
    return float(value) if value else default


def _train(store: ArtifactStore, paths: RunPaths) -> int:
    config = _read_config(store, paths)
    spec = config.spec
    log.info("run %s: %s on %s", store.uri(paths.prefix), spec.model_id, spec.dataset.uri)
    with tempfile.TemporaryDirectory(
        prefix="finetune-train-", dir=os.environ.get(WORKDIR_ENV)
    ) as scratch:
        work = Path(scratch)
        dataset = data.fetch(spec.dataset.uri, work / "dataset")
        numbered = data.read_numbered(dataset)
        log.info("dataset %s: %d conversations, every line valid", dataset.name, len(numbered))
        # Only now the heavy imports; select_backend imports unsloth (on a GPU) first.
        from finetune_trainer import modeling

        modeling.select_backend()
        return _train_model(store, paths, spec, work, _encode(spec, dataset, numbered))


@dataclass(frozen=True)
class Rows:
    """The encoded splits, and the dataset facts metrics.json reports."""

    train: list[EncodedRow]
    eval: list[EncodedRow]
    truncated: int
    sha256: str


def _encode(spec: ResolvedSpec, dataset: Path, numbered: list[tuple[int, Conversation]]) -> Rows:
    """Tokenize with the chat template (every line checked against maxSeqLength) and split."""
    from finetune_trainer.encoding import encode_dataset
    from finetune_trainer.modeling import load_tokenizer

    encoded = encode_dataset(
        load_tokenizer(spec),
        numbered,
        spec.max_seq_length,
        spec.dataset.too_long,
        source=dataset.name,
    )
    train, held_out = data.split_indices(len(numbered), spec.dataset.validation_split, spec.seed)
    rows = Rows(
        encoded.select(train),
        encoded.select(held_out),
        encoded.truncated,
        data.sha256_file(dataset),
    )
    if not rows.train or not rows.eval:
        problem = "no conversation left to train or evaluate on after cutting to maxSeqLength"
        raise DatasetError([LineProblem(0, problem)], dataset.name)
    if rows.truncated:
        log.warning("%d conversations cut to maxSeqLength %d", rows.truncated, spec.max_seq_length)
    return rows


def _lora_model(spec: ResolvedSpec) -> tuple[LoadedModel, Any]:
    """The base model for training with a fresh adapter; target modules checked first."""
    from finetune_trainer.modeling import adaptable_modules, add_lora, load_base

    loaded = load_base(spec, training=True)
    modules = adaptable_modules(loaded.model)
    unknown = plan.unknown_target_modules(spec.target_modules, modules)
    if unknown:
        raise TrainFailure(
            "UnknownTargetModules",
            f"lora.targetModules: {', '.join(unknown)} not found in {spec.model_id}; its "
            f"modules are: {', '.join(plan.short_names(modules))}",
            EXIT_INVALID_INPUT,
        )
    return loaded, add_lora(loaded, spec)


def _train_model(
    store: ArtifactStore, paths: RunPaths, spec: ResolvedSpec, work: Path, rows: Rows
) -> int:
    from finetune_trainer import training
    from finetune_trainer.modeling import bitsandbytes_usable
    from finetune_trainer.progress import ProgressReporter, progress_interval

    stop = training.StopOnSignal()
    stop.install()
    steps = plan.plan_steps(
        len(rows.train),
        spec.batch_size,
        spec.gradient_accumulation_steps,
        spec.epochs,
        spec.max_steps,
    )
    optimizer, note = plan.choose_optimizer(spec.optimizer, bitsandbytes_usable())
    if note:
        log.warning("%s", note)
    log.info(
        "%d training and %d validation conversations; %d steps (%d per epoch)",
        len(rows.train),
        len(rows.eval),
        steps.total_steps,
        steps.steps_per_epoch,
    )
    loaded, model = _lora_model(spec)

    uploader = BackgroundUploader()
    sync = CheckpointSync(store, paths, uploader, work / "staging", spec.keep_checkpoints)
    output_dir = work / "trainer"
    resume = sync.download_newest(output_dir)
    saved = read_state(resume.path) if resume else {}
    if resume:
        log.info("resuming from checkpoint step-%d", resume.step, extra={"step": resume.step})

    own: dict[str, float] = {}
    started = time.monotonic()

    def own_state() -> dict[str, float]:
        """Saved into each checkpoint: what a resumed attempt cannot measure again."""
        elapsed = saved.get("trainSeconds", 0.0) + time.monotonic() - started
        return {**own, "trainSeconds": elapsed}

    def publish(progress: dict[str, Any]) -> None:
        uploader.submit(
            "progress.json", lambda: store.put_json(paths.progress, progress), slot="progress"
        )

    trainer = training.build_trainer(
        loaded,
        model,
        training.training_arguments(spec, steps, output_dir, optimizer, loaded),
        rows.train,
        rows.eval,
        [
            stop,
            training.UploadCheckpoints(sync, own_state),
            ProgressReporter(publish, progress_interval()),
        ],
    )
    base_eval_loss = saved.get("baseEvalLoss")
    if base_eval_loss is None:
        base_eval_loss = float(trainer.evaluate()["eval_loss"])
    own["baseEvalLoss"] = base_eval_loss
    log.info("base model eval loss %.4f", base_eval_loss, extra={"baseEvalLoss": base_eval_loss})

    started = time.monotonic()
    trainer.train(resume_from_checkpoint=str(resume.path) if resume else None)
    if stop.requested and trainer.state.global_step < steps.total_steps:
        done = uploader.close(_seconds(TERM_WAIT_ENV, 20.0))
        log.warning(
            "stopped at step %d by SIGTERM; checkpoint %s",
            trainer.state.global_step,
            "uploaded" if done else "upload unfinished",
        )
        return EXIT_TERMINATED

    eval_loss = training.final_eval_loss(trainer)
    history = losscurve.loss_history(trainer.state.log_history, base_eval_loss)
    metrics = Metrics(
        train_loss=losscurve.final_train_loss(history, steps.steps_per_epoch),
        eval_loss=eval_loss,
        perplexity=math.exp(min(eval_loss, 700.0)),
        base_eval_loss=base_eval_loss,
        train_runtime_seconds=round(own_state()["trainSeconds"], 2),
        train_tokens=int(trainer.state.num_input_tokens_seen or 0),
        dataset_sha256=rows.sha256,
        train_rows=len(rows.train),
        eval_rows=len(rows.eval),
        truncated_rows=rows.truncated,
    )
    log.info(
        "eval loss %.4f (base %.4f), perplexity %.2f",
        eval_loss,
        base_eval_loss,
        metrics.perplexity or 0.0,
        extra={"metrics": metrics.to_wire()},
    )
    if not uploader.close(_seconds(UPLOAD_WAIT_ENV, 600.0)):
        log.error("some checkpoint uploads did not finish; the adapter is uploaded regardless")
    _publish_results(store, paths, spec, work, model, loaded.tokenizer, history, metrics)
    return EXIT_OK


def _publish_results(
    store: ArtifactStore,
    paths: RunPaths,
    spec: ResolvedSpec,
    work: Path,
    model: Any,
    tokenizer: Any,
    history: list[dict[str, Any]],
    metrics: Metrics,
) -> None:
    """Upload the adapter (PEFT format, with tokenizer and chat template), the loss report,
    then metrics.json: a reader that sees the metrics finds everything else in place."""
    adapter_dir = work / "adapter"
    # Name the model id, not our local cache path; embeddings are not trained, so there is
    # no need to compare them with the hub's (save_embedding_layers="auto" would fetch it).
    model.peft_config["default"].base_model_name_or_path = spec.model_id
    model.save_pretrained(str(adapter_dir), save_embedding_layers=False)
    tokenizer.save_pretrained(str(adapter_dir))
    chart = work / "loss.png"
    losscurve.plot_loss(history, chart, f"{paths.name} g{paths.generation}: {spec.model_id}")

    store.upload_dir(paths.adapter, adapter_dir)
    store.put_json(f"{paths.report}/loss_history.json", history)
    store.put_file(f"{paths.report}/loss.png", chart)
    store.put_json(paths.metrics, metrics.to_wire())
    log.info("adapter uploaded to %s", store.uri(paths.adapter))
