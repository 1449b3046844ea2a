"""How much the benchmark harness adds to the latency it measures.

The harness (finetune_trainer.timing.measure: a streamer timestamping every token, a
device synchronisation around each call) against a bare loop that only times
`model.generate` with the same prompts, model, options and token counts. Within a run the
two kinds alternate sample by sample on the same prompt (harness then bare, then bare then
harness, ...), so that a drift in machine speed hits both alike; each run reports the median
end-to-end latency of each kind, and the figure is the ratio of the medians of the run
medians (the median ratio of the back-to-back pairs is printed beside it: on a busy machine
it is the steadier one). Target: the harness adds at most 5 %.

    python benchmarks/harness_overhead.py [--runs 5] [--samples 6] [--max-new-tokens 32]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

from finetune_core.api import FineTuneJobSpec
from finetune_trainer.backend import select_backend

PROMPTS = [
    "What is a Python list comprehension?",
    "How do I read a file line by line in Python?",
    "Explain what a decorator does.",
    "When should I use a tuple instead of a list?",
]
TARGET = 1.05


def bare_latency(model: Any, prompt: dict[str, Any], options: dict[str, Any]) -> float:
    """Only generate(), timed from the outside."""
    import torch

    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(**prompt, **options)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs (each measures both kinds)")
    parser.add_argument("--samples", type=int, default=6, help="measured samples per kind and run")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--model", default="smollm2-135m", help="a model preset")
    args = parser.parse_args()

    select_backend()  # before transformers is imported (unsloth on a GPU)
    from finetune_trainer import modeling
    from finetune_trainer.environment import describe_device
    from finetune_trainer.prompts import Prompt, encode_prompts
    from finetune_trainer.timing import generation_options, measure

    spec = FineTuneJobSpec.model_validate(
        {
            "model": {"preset": args.model},
            "dataset": {"uri": "unused.jsonl"},
            "benchmark": {
                "sla": [
                    {
                        "name": "overhead",
                        "maxNewTokens": args.max_new_tokens,
                        "maxLatencySeconds": 1,
                    }
                ]
            },
        }
    ).resolve()
    profile = spec.benchmark.sla[0]
    loaded = modeling.load_for_inference(spec, adapter_dir=None)
    prompts = encode_prompts(
        loaded.model,
        loaded.tokenizer,
        loaded.device,
        [Prompt(f"prompt {i}", [{"role": "user", "content": p}]) for i, p in enumerate(PROMPTS)],
        profile,
    )
    options = generation_options(loaded.tokenizer, args.max_new_tokens)
    print(
        f"device: {describe_device(loaded.device)}; backend {loaded.backend}, {loaded.dtype}; "
        f"{args.runs} x {args.samples} samples of {args.max_new_tokens} tokens per kind"
    )

    measure(loaded.model, prompts, options, samples=0, warmup=2)  # shared warm-up
    harness: list[float] = []
    bare: list[float] = []
    pairs: list[float] = []  # harness / bare of each back-to-back pair
    for run in range(1, args.runs + 1):
        timed: dict[str, list[float]] = {"harness": [], "bare": []}
        for index in range(args.samples):
            prompt = prompts[index % len(prompts)]
            # Pairs on the same prompt, back to back, the first of the pair alternating.
            for kind in ("harness", "bare") if (run + index) % 2 else ("bare", "harness"):
                if kind == "harness":
                    (sample,) = measure(loaded.model, [prompt], options, samples=1, warmup=0)
                    timed[kind].append(sample.latency)
                else:
                    timed[kind].append(bare_latency(loaded.model, prompt, options))
        pairs += [h / b for h, b in zip(timed["harness"], timed["bare"], strict=True)]
        harness.append(statistics.median(timed["harness"]))
        bare.append(statistics.median(timed["bare"]))
        print(
            f"run {run}: harness median {harness[-1]:.4f} s, bare median {bare[-1]:.4f} s, "
            f"ratio {harness[-1] / bare[-1]:.4f}"
        )
    ratio = statistics.median(harness) / statistics.median(bare)
    print(
        f"median of run medians: harness {statistics.median(harness):.4f} s, "
        f"bare {statistics.median(bare):.4f} s"
    )
    print(f"median ratio of back-to-back pairs: {statistics.median(pairs):.4f}")
    print(f"harness / bare = {ratio:.4f} ({(ratio - 1) * 100:+.2f} %), target <= {TARGET}")
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
