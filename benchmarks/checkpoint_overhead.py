"""What a checkpoint every few steps costs the training loop, with the store on S3.

The trainer saves a checkpoint on its own disk (Trainer.save, on the step's path), then
hands a hard-linked copy to a background thread that uploads it (uploads.py): the upload
should cost the steps next to nothing. This script measures it: the trainer's own set-up and
loop (finetune_trainer.train.set_up and train, as `finetune train --run` runs them) on
SmolLM2-135M-Instruct and the demo dataset, its run in a bucket on moto's S3 server (run in
a child process on localhost, the server the tests use), once with `saveSteps: 5` and once
without a checkpoint inside the timed steps, alternating round by round. Both upload
progress.json alike. Steps are timed from the first step's start to the last step's end
(the checkpoint saved after the last step falls outside, for both).

Prints steps/s of each kind (median over rounds), the slowdown (target: at most 5 %), and
the checkpoints each run uploaded; then the cost measured inside the runs with checkpoints,
which a drift in the shared machine's speed between runs does not reach: the gap a save
leaves between two steps, and what the two steps after it take beyond the others (the
upload runs beside them).

    python benchmarks/checkpoint_overhead.py                  # 2 rounds of 20 steps
    python benchmarks/checkpoint_overhead.py --rounds 3 --steps 15 --batch-size 2
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as train.main sets it, before torch

REPO = Path(__file__).resolve().parents[1]
DEMO_DATASET = REPO / "manifests" / "examples" / "datasets" / "devassist.jsonl"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench-access-key", "AWS_SECRET_ACCESS_KEY": "bench-secret"}
SERVER = """
import logging, sys, threading
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.ERROR)
server = ThreadedMotoServer(ip_address="127.0.0.1", port=int(sys.argv[1]), verbose=False)
server.start()
print("ready", flush=True)
sys.stdin.read()  # until the parent closes stdin
server.stop()
"""


def parse_options(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="runs of each kind")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per run")
    parser.add_argument("--save-steps", type=int, default=5, help="checkpoint interval")
    parser.add_argument("--batch-size", type=int, default=4, help="conversations per step")
    parser.add_argument("--output", type=Path, help="also write the results here as JSON")
    return parser.parse_args(argv)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_s3_server() -> tuple[subprocess.Popen[str], str]:
    """moto's threaded S3 server in a child process; (process, endpoint)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    if process.stdout.readline().strip() != "ready":
        process.kill()
        raise SystemExit("moto's S3 server did not start")
    return process, f"http://127.0.0.1:{port}"


class TrainClock:
    """Each step's start and end, from a TrainerCallback's two hooks. Trainer saves a
    checkpoint between a step's end and the next step's start, so that gap is the save's
    cost on the step's path; the steps right after it bear the upload's competition."""

    def __init__(self) -> None:
        self.begins: list[float] = []
        self.ends: list[float] = []

    def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
        self.begins.append(time.perf_counter())

    def on_step_end(self, *args: Any, **kwargs: Any) -> None:
        self.ends.append(time.perf_counter())

    def steps_per_second(self) -> float:
        assert self.ends, "no step ran"
        return len(self.ends) / (self.ends[-1] - self.begins[0])

    def within_run(self, save_steps: int) -> dict[str, float]:
        """Seconds of the gaps after checkpoint steps and after the others, and of the
        steps after a checkpoint and the others: the cost measured inside one run, which a
        drift in the machine's speed between runs does not reach."""
        steps = len(self.ends)
        gaps = [self.begins[i + 1] - self.ends[i] for i in range(steps - 1)]
        durations = [self.ends[i] - self.begins[i] for i in range(steps)]
        saved = {i for i in range(steps - 1) if (i + 1) % save_steps == 0}
        after = {i + 1 for i in saved} | {i + 2 for i in saved if i + 2 < steps}
        plain_gaps = [g for i, g in enumerate(gaps) if i not in saved] or [0.0]
        plain_steps = [d for i, d in enumerate(durations) if i not in after]
        return {
            "saveGapSeconds": statistics.mean(g for i, g in enumerate(gaps) if i in saved)
            if saved
            else 0.0,
            "otherGapSeconds": statistics.mean(plain_gaps),
            "stepsAfterSaveSeconds": statistics.mean(durations[i] for i in after) if after else 0.0,
            "otherStepSeconds": statistics.median(plain_steps),
            "checkpointsTimed": len(saved),
            "steps": steps,
        }


def run(options: argparse.Namespace, endpoint: str, save_steps: int, work: Path) -> dict[str, Any]:
    """One training run in a fresh bucket; steps/s and the checkpoints it uploaded."""
    from transformers import TrainerCallback

    from finetune_core.api import FineTuneJobSpec, RunConfig
    from finetune_core.layout import RunPaths
    from finetune_core.store import S3Store
    from finetune_trainer import train

    bucket = f"bench-{uuid.uuid4().hex[:12]}"
    store = S3Store(
        bucket,
        endpoint=endpoint,
        access_key=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        secret_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )
    store.ensure_bucket()
    spec = FineTuneJobSpec.model_validate(
        {
            "model": {"preset": "smollm2-135m"},
            "dataset": {"uri": str(DEMO_DATASET), "validationSplit": 0.01},  # a short eval
            "lora": {"r": 16, "alpha": 16, "dropout": 0.0},
            "training": {
                "maxSteps": options.steps,
                "batchSize": options.batch_size,
                "precision": "fp32",
                "saveSteps": save_steps,
                "keepCheckpoints": 100,
            },
            "resources": {"gpus": 0},
        }
    ).resolve()
    paths = RunPaths("bench", f"save-{save_steps}", 1)
    config = RunConfig(namespace=paths.namespace, name=paths.name, generation=1, spec=spec)
    store.put_json(paths.config, config.to_wire())
    session = train.set_up(store, paths, spec, work)
    clock = TrainClock()
    hooks = {"on_step_begin": clock.on_step_begin, "on_step_end": clock.on_step_end}
    session.trainer.add_callback(type("Clock", (TrainerCallback,), hooks)())
    train.train(session)
    uploaded = session.uploader.close(120.0)
    stored = sorted(store.list(paths.checkpoints)) if uploaded else []
    return {
        **clock.within_run(save_steps),
        "stepsPerSecond": clock.steps_per_second(),
        "uploadsFinished": uploaded,
        "checkpointFiles": len(stored),
    }


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    sys.path[:0] = [str(REPO / part) for part in ("core", "trainer")]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("FINETUNE_BACKEND", "transformers")
    from finetune_trainer.backend import select_backend
    from finetune_trainer.logs import setup_logging

    setup_logging()
    select_backend()
    kinds = {f"every {options.save_steps} steps": options.save_steps, "none": 1_000_000}
    results: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
    server, endpoint = start_s3_server()
    try:
        with tempfile.TemporaryDirectory(prefix="checkpoint-overhead-") as scratch:
            for round_ in range(options.rounds):
                for kind, save_steps in kinds.items():
                    result = run(options, endpoint, save_steps, Path(scratch) / f"{round_}-{kind}")
                    results[kind].append(result)
                    print(
                        f"round {round_ + 1} checkpoints {kind}: "
                        f"{result['stepsPerSecond']:.4f} steps/s",
                        flush=True,
                    )
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(30)
    with_checkpoints, without = (
        statistics.median(r["stepsPerSecond"] for r in results[kind]) for kind in kinds
    )
    slowdown = 1 - with_checkpoints / without
    print(
        f"SmolLM2-135M, batch {options.batch_size}, {options.steps} steps, fp32, "
        f"store on moto's S3 server, {options.rounds} rounds"
    )
    for kind, runs in results.items():
        median = statistics.median(r["stepsPerSecond"] for r in runs)
        files = runs[0]["checkpointFiles"]
        print(f"checkpoints {kind:<16}{median:>9.4f} steps/s  ({files} checkpoint files stored)")
    print(f"slowdown from checkpoints: {slowdown:.1%} (target <= 5 %)")
    inside = [r for r in results[next(iter(kinds))] if r["checkpointsTimed"]]
    if inside:
        save = statistics.median(r["saveGapSeconds"] - r["otherGapSeconds"] for r in inside)
        extra = statistics.median(
            r["stepsAfterSaveSeconds"] - r["otherStepSeconds"] for r in inside
        )
        step = statistics.median(r["otherStepSeconds"] for r in inside)
        per_checkpoint = save + 2 * extra
        estimate = per_checkpoint / (options.save_steps * step)
        print(
            f"inside the runs with checkpoints: save {save:.2f} s on the step's path, "
            f"{extra:+.2f} s on each of the 2 steps after it (upload), step {step:.2f} s: "
            f"{estimate:.1%} slowdown at one checkpoint per {options.save_steps} steps"
        )
    if options.output:
        options.output.write_text(json.dumps({"runs": results, "slowdown": slowdown}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
