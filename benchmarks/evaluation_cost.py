"""What the benchmark stage's quality evaluation adds to it: the held-out likelihood (eval
loss, perplexity, bits per byte) and the review answers of the base model and the adapter,
timed part by part on a manifest's model, data and settings (default: the CPU quickstart).

The model and the adapter are loaded first and not timed: the stage loads them anyway, to
measure latency. Without --adapter a fresh LoRA adapter is used (it changes nothing yet, so
both answer sets are the base model's: the same work as a trained adapter's, bar answer
lengths); pass a trained one, e.g. the adapter/ of a quickstart run, for the real answers.

    .venv/bin/python benchmarks/evaluation_cost.py
    .venv/bin/python benchmarks/evaluation_cost.py \\
        --adapter .finetune/runs/local/quickstart/g1/adapter

Each part is printed with its wall time and the CPU time this process spent on it (on a
machine shared with other work the CPU time is the steadier figure; divided by the torch
threads it approximates the wall time on an idle machine).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "manifests" / "examples" / "quickstart.yaml"


def elapsed(clock: tuple[float, float]) -> tuple[float, float]:
    """(wall, CPU) seconds since `clock` was read."""
    return time.monotonic() - clock[0], time.process_time() - clock[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--manifest", type=Path, default=QUICKSTART)
    parser.add_argument("--adapter", type=Path, help="a trained adapter directory")
    parser.add_argument("--samples", type=int, help="evaluation.samples (default: the spec's)")
    options = parser.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the stages set it

    from finetune_cli.local.manifest import load_job
    from finetune_trainer.backend import select_backend

    spec = load_job(options.manifest).spec
    if options.samples is not None:
        evaluation = spec.evaluation.model_copy(update={"samples": options.samples})
        spec = spec.model_copy(update={"evaluation": evaluation})
    select_backend()
    from finetune_trainer import evaluation as ev
    from finetune_trainer.lora import add_lora
    from finetune_trainer.modeling import LoadedModel, load_base, load_for_inference

    started = time.monotonic()
    if options.adapter:
        loaded = load_for_inference(spec, options.adapter)
    else:
        base = load_base(spec, training=False)
        model = add_lora(base, spec).eval()
        loaded = LoadedModel(model, base.tokenizer, base.backend, base.device, base.dtype)
    print(
        f"model: {spec.model_id} on {loaded.device} ({loaded.dtype}), adapter: "
        f"{options.adapter or 'fresh'}; loading (not counted) {time.monotonic() - started:.1f} s"
    )

    parts: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as workdir:
        clock = (time.monotonic(), time.process_time())
        held_out = ev.read_held_out(spec, Path(workdir))
        rows = ev.held_out_rows(spec, loaded.tokenizer, held_out)
        parts["read and tokenize held-out"] = elapsed(clock)
        clock = (time.monotonic(), time.process_time())
        pad = loaded.tokenizer.pad_token_id or 0
        measured = ev.likelihood(loaded.model, rows, loaded.device, pad)
        parts[f"likelihood ({len(rows)} conversations, {measured.tokens} tokens)"] = elapsed(clock)
        prompts = ev.review_sample(held_out.validation, spec.evaluation.samples, spec.seed)
        answers: dict[str, list[str]] = {"base": [], "adapter": []}
        if prompts:
            budget = ev.review_token_budget(loaded.tokenizer, prompts)
            clock = (time.monotonic(), time.process_time())
            with ev.base_model(loaded.model):
                answers["base"] = ev.answer(
                    loaded.model, loaded.tokenizer, loaded.device, prompts, budget
                )
            parts[f"base answers ({len(prompts)}, <= {budget} new tokens)"] = elapsed(clock)
            clock = (time.monotonic(), time.process_time())
            answers["adapter"] = ev.answer(
                loaded.model, loaded.tokenizer, loaded.device, prompts, budget
            )
            parts[f"adapter answers ({len(prompts)}, <= {budget} new tokens)"] = elapsed(clock)
            clock = (time.monotonic(), time.process_time())
            references = [p.reference for p in prompts]
            scores = [
                ev.bleu(answers["base"], references),
                ev.bleu(answers["adapter"], references),
                ev.rouge_l(answers["base"], references),
                ev.rouge_l(answers["adapter"], references),
            ]
            parts["BLEU and ROUGE-L"] = elapsed(clock)
            print(
                "BLEU base {:.2f} adapter {:.2f}; ROUGE-L base {:.3f} adapter {:.3f}".format(
                    *scores
                )
            )
    print(
        f"eval loss {measured.eval_loss:.4f}, bits per byte {measured.bits_per_byte:.4f}"
        if measured.eval_loss is not None and measured.bits_per_byte is not None
        else "nothing to evaluate"
    )
    import torch

    width = max(len(name) for name in parts)
    print(
        f"{'part':<{width}}  {'wall s':>7}  {'CPU s':>7}"
        f"   (torch threads: {torch.get_num_threads()})"
    )
    for name, (wall, cpu) in parts.items():
        print(f"{name:<{width}}  {wall:7.1f}  {cpu:7.1f}")
    total_wall = sum(wall for wall, _ in parts.values())
    total_cpu = sum(cpu for _, cpu in parts.values())
    print(f"{'total added to the benchmark stage':<{width}}  {total_wall:7.1f}  {total_cpu:7.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
