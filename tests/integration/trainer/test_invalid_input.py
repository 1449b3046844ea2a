"""Input that training cannot use fails fast with exit code 3 and an error.json that
names the problem, before the model is loaded where possible."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from finetune_core.exit_codes import EXIT_INVALID_INPUT
from finetune_core.layout import RunPaths
from finetune_core.store import LocalStore, S3Store
from tests.integration.trainer.harness import small_spec, trainer_env, write_run

PATHS = RunPaths("ml", "bad", 1)
GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}

# Runs `finetune train` in-process, then reports which heavy modules it imported.
RUN_AND_REPORT_MODULES = """
import json, sys
from finetune_trainer.train import main
code = main(sys.argv[1])
print(json.dumps({"code": code, "torch": "torch" in sys.modules,
                  "transformers": "transformers" in sys.modules}))
"""


def test_malformed_dataset_is_reported_by_line_before_any_model_is_loaded(
    tmp_path: Path,
) -> None:
    store = LocalStore(tmp_path / "store")
    dataset = tmp_path / "bad.jsonl"
    dataset.write_text(
        "\n".join(
            [
                json.dumps(GOOD),
                '{"messages": [{"role": "user", "content": "hi"}',
                json.dumps(GOOD),
                json.dumps({"messages": [{"role": "user", "content": "no reply"}]}),
                json.dumps({"messages": [{"role": "robot", "content": "x"}, GOOD["messages"][1]]}),
            ]
        )
        + "\n"
    )
    run_uri = write_run(store, PATHS, small_spec(str(dataset)))
    cache = tmp_path / "empty-model-cache"
    result = subprocess.run(
        [sys.executable, "-c", RUN_AND_REPORT_MODULES, run_uri],
        env=trainer_env(FINETUNE_CACHE=str(cache)),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"code": EXIT_INVALID_INPUT, "torch": False, "transformers": False}
    assert not cache.exists()  # no model was converted or read

    error = store.get_json(PATHS.error)
    assert (error["stage"], error["reason"]) == ("train", "InvalidDataset")
    lines = error["message"].splitlines()
    assert lines[0] == "bad.jsonl: 3 problems"
    assert lines[1].startswith("  line 2: invalid JSON")
    assert lines[2] == "  line 4: no assistant message: nothing to learn from"
    assert lines[3] == "  line 5: messages[0].role: 'robot' is not one of system, user, assistant"


def test_missing_dataset_and_missing_config(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    run_uri = write_run(store, PATHS, small_spec(str(tmp_path / "nowhere.jsonl")))
    result = finetune_train(run_uri)
    assert result.returncode == EXIT_INVALID_INPUT
    assert store.get_json(PATHS.error)["reason"] == "InvalidDataset"
    assert "no such file" in store.get_json(PATHS.error)["message"]

    other = RunPaths("ml", "unconfigured", 1)
    result = finetune_train(store.uri(other.prefix))
    assert result.returncode == EXIT_INVALID_INPUT
    assert store.get_json(other.error)["reason"] == "InvalidConfig"


def finetune_train(run_uri: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "finetune_cli", "train", "--run", run_uri],
        env=trainer_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.mark.slow
def test_unknown_target_modules_name_the_modules_the_model_has(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    dataset = tmp_path / "ok.jsonl"
    dataset.write_text((json.dumps(GOOD) + "\n") * 4)
    spec = small_spec(str(dataset))
    spec["lora"]["targetModules"] = ["q_proj", "qkv_proj", "gate_up_proj"]  # phi-4's fused names
    result = finetune_train(write_run(store, PATHS, spec))
    assert result.returncode == EXIT_INVALID_INPUT, result.stderr[-2000:]
    error = store.get_json(PATHS.error)
    assert error["reason"] == "UnknownTargetModules"
    assert error["message"].startswith(
        "lora.targetModules: qkv_proj, gate_up_proj not found in HuggingFaceTB/SmolLM2-135M"
    )
    assert "k_proj, lm_head, o_proj, q_proj, up_proj, v_proj" in error["message"]
    assert not store.exists(PATHS.metrics)


def test_a_dataset_rewritten_under_its_pinned_sha256_fails_before_training(
    tmp_path: Path, s3_store: S3Store
) -> None:
    """spec.dataset.sha256 pins the content: the same URI with other bytes is not trained on."""
    s3_store.put_bytes("data/v3.jsonl", ((json.dumps(GOOD) + "\n") * 4).encode())
    pinned = hashlib.sha256(b"what the author reviewed").hexdigest()
    spec = small_spec(f"s3://{s3_store.bucket}/data/v3.jsonl")
    spec["dataset"]["sha256"] = pinned
    run_uri = write_run(s3_store, PATHS, spec)
    result = finetune_train(run_uri)
    assert result.returncode == EXIT_INVALID_INPUT, result.stderr
    error = s3_store.get_json(PATHS.error)
    assert error["reason"] == "DatasetChanged"
    assert pinned in error["message"] and "v3.jsonl" in error["message"]
