"""One real training run on the demo dataset against the S3 server, checked from every side:
exit code, adapter, metrics and progress contracts, loss report, checkpoints, and the
adapter's effect on generation in a fresh process."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from finetune_core.api import Metrics, Progress
from finetune_core.layout import RunPaths
from finetune_core.store import S3Store
from finetune_trainer.data import read_conversations
from tests.conftest import PROGRESS_CONTRACT_KEYS, TEST_CREDENTIALS
from tests.integration.trainer.harness import (
    complete_steps,
    log_lines,
    messages,
    short_demo_dataset,
    small_spec,
    start_trainer,
    trainer_env,
    write_run,
)

pytestmark = pytest.mark.slow

PATHS = RunPaths("ml", "devassist", 1)
ROWS = 60
MAX_STEPS = 10
SAVE_STEPS = 4
KEEP = 2


@dataclass(frozen=True)
class TrainedRun:
    store: S3Store
    dataset: Path
    returncode: int
    log: Path
    adapter: Path


@pytest.fixture(scope="module")
def run(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrainedRun]:
    """`finetune train` once for the module: 10 steps of smollm2-135m on 60 demo rows."""
    work = tmp_path_factory.mktemp("train-run")
    store = S3Store(
        f"ft-{uuid.uuid4().hex[:12]}",
        endpoint=s3_endpoint,
        access_key=TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        secret_key=TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )
    store.ensure_bucket()
    dataset = short_demo_dataset(work / "devassist-short.jsonl", ROWS)
    store.put_file("datasets/devassist-short.jsonl", dataset)
    run_uri = write_run(
        store,
        PATHS,
        small_spec(
            f"s3://{store.bucket}/datasets/devassist-short.jsonl",
            maxSteps=MAX_STEPS,
            saveSteps=SAVE_STEPS,
            keepCheckpoints=KEEP,
        ),
    )
    log = work / "train.log"
    process = start_trainer(run_uri, trainer_env(s3_endpoint), log)
    returncode = process.wait(timeout=900)
    adapter = work / "adapter"
    store.download_dir(PATHS.adapter, adapter)
    yield TrainedRun(store, dataset, returncode, log, adapter)


def test_exits_zero_without_error_report(run: TrainedRun) -> None:
    assert run.returncode == 0, run.log.read_text()[-3000:]
    assert not run.store.exists(PATHS.error)


def test_adapter_is_peft_with_tokenizer_and_chat_template(run: TrainedRun) -> None:
    names = {path.name for path in run.adapter.iterdir()}
    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    } <= names
    config = json.loads((run.adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert (config["r"], config["lora_alpha"]) == (16, 32)  # the preset's
    assert set(config["target_modules"]) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }


def test_metrics_contract_and_the_adapter_beats_the_base_model(run: TrainedRun) -> None:
    wire = run.store.get_json(PATHS.metrics)
    assert {
        "trainLoss",
        "evalLoss",
        "perplexity",
        "baseEvalLoss",
        "trainRuntimeSeconds",
        "trainTokens",
        "datasetSha256",
        "trainRows",
        "evalRows",
        "truncatedRows",
        "backend",
    } <= set(wire)
    metrics = Metrics.model_validate(wire)
    assert metrics.eval_loss is not None and metrics.base_eval_loss is not None
    assert metrics.eval_loss < metrics.base_eval_loss
    assert metrics.perplexity == pytest.approx(math.exp(metrics.eval_loss))
    assert (metrics.train_rows, metrics.eval_rows) == (ROWS - 6, 6)
    assert metrics.dataset_sha256 == hashlib.sha256(run.dataset.read_bytes()).hexdigest()
    assert metrics.train_tokens is not None and metrics.train_tokens > 0
    assert metrics.truncated_rows == expected_truncated(run.dataset, 128)
    assert metrics.backend == "transformers"  # FINETUNE_BACKEND unset: auto, on a CPU
    assert metrics.dataset_etag == run.store.etag("datasets/devassist-short.jsonl")


def expected_truncated(dataset: Path, max_seq_length: int) -> int:
    from transformers import AutoTokenizer

    from finetune_trainer.modeling import local_model_path

    tokenizer: Any = AutoTokenizer.from_pretrained(
        local_model_path("HuggingFaceTB/SmolLM2-135M-Instruct")
    )
    lengths = [
        len(tokenizer.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"])
        for c in read_conversations(dataset)
    ]
    return sum(length > max_seq_length for length in lengths)


def test_progress_contract_at_the_end(run: TrainedRun) -> None:
    wire = run.store.get_json(PATHS.progress)
    assert set(wire) == PROGRESS_CONTRACT_KEYS
    progress = Progress.model_validate(wire)
    assert progress.step == progress.total_steps == MAX_STEPS
    assert progress.tokens_per_second and progress.tokens_per_second > 0
    assert progress.eta_seconds == 0


def test_progress_was_published_during_training(run: TrainedRun) -> None:
    steps = [line["progress"]["step"] for line in log_lines(run.log) if "progress" in line]
    assert steps[0] == 0 and steps[-1] == MAX_STEPS
    assert len(set(steps)) > 2  # intermediate steps, not only the start and the end


def test_checkpoints_every_save_steps_keeping_the_newest(run: TrainedRun) -> None:
    assert complete_steps(run.store, PATHS) == [8, 10]  # saved at 4, 8 and the end; keep 2
    assert all(
        key.split("/")[5] in {"step-8", "step-10"}
        for key in run.store.list(PATHS.checkpoints + "/")
    )
    state = json.loads(run.store.get_bytes(f"{PATHS.checkpoint(10)}/trainer_state.json"))
    assert state["global_step"] == MAX_STEPS
    assert any(text.startswith("checkpoint step-4 uploaded") for text in messages(run.log))
    assert "deleted checkpoint step-4" in messages(run.log)


def test_loss_report(run: TrainedRun) -> None:
    history: list[dict[str, Any]] = run.store.get_json(f"{PATHS.report}/loss_history.json")
    metrics = run.store.get_json(PATHS.metrics)
    assert history[0] == {"step": 0, "evalLoss": metrics["baseEvalLoss"]}
    assert [entry["step"] for entry in history if "loss" in entry] == list(range(1, 11))
    assert history[-1]["step"] == MAX_STEPS and history[-1]["evalLoss"] == metrics["evalLoss"]
    assert run.store.get_bytes(f"{PATHS.report}/loss.png")[:4] == b"\x89PNG"


GENERATE = """
import json, sys
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
base_dir, adapter_dir, prompts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
tokenizer = AutoTokenizer.from_pretrained(adapter_dir)

def generate(model):
    out = []
    for messages in prompts:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)
        tokens = model.generate(**ids, max_new_tokens=16, do_sample=False)
        out.append(tokenizer.decode(tokens[0][ids["input_ids"].shape[1]:]))
    return out

base = AutoModelForCausalLM.from_pretrained(base_dir)
before = generate(base)
adapted = PeftModel.from_pretrained(base, adapter_dir)
print(json.dumps({"base": before, "adapted": generate(adapted.eval()),
                  "type": type(adapted).__name__}))
"""


def test_adapter_loads_in_a_fresh_process_and_changes_generations(run: TrainedRun) -> None:
    from finetune_trainer.modeling import local_model_path

    prompts = [
        [m for m in conversation if m["role"] != "assistant"][:2]
        for conversation in read_conversations(run.dataset)[:2]
    ]
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            GENERATE,
            local_model_path("HuggingFaceTB/SmolLM2-135M-Instruct"),
            str(run.adapter),
            json.dumps(prompts),
        ],
        env=trainer_env(OMP_WAIT_POLICY="PASSIVE"),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = json.loads(result.stdout.strip().splitlines()[-1])
    assert output["type"] == "PeftModelForCausalLM"
    assert all(text.strip() for text in output["adapted"])
    assert output["adapted"] != output["base"]
