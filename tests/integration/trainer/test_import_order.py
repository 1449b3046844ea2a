"""unsloth patches transformers, trl and peft when it is imported, so it must come first: the
pod entry points import none of them before the backend is chosen, and the backend imports
unsloth before anything else does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from finetune_core.exit_codes import EXIT_FAILED
from finetune_core.layout import RunPaths
from finetune_core.store import LocalStore
from tests.integration.trainer.harness import small_spec, trainer_env, write_run

PATCHED = ("transformers", "trl", "peft", "unsloth")
IMPORTED_AFTER_ENTRY_POINTS = f"""
import json, sys
import finetune_trainer.backend, finetune_trainer.benchmark, finetune_trainer.train
print(json.dumps([name for name in {PATCHED!r} if name in sys.modules]))
"""
# A stand-in for unsloth that records what was imported before it, then imports as unsloth
# would on a machine without a GPU (the backend then finds no GPU and stops).
FAKE_UNSLOTH = """
import json, os, sys
with open(os.environ["UNSLOTH_RECORD"], "w") as record:
    json.dump([name for name in ("transformers", "trl", "peft") if name in sys.modules], record)
"""
ENTRY = "import sys\nfrom finetune_trainer.{stage} import main\nsys.exit(main(sys.argv[1]))\n"
ROW = {"messages": [{"role": "user", "content": "hi?"}, {"role": "assistant", "content": "yo"}]}


def test_the_entry_points_import_nothing_that_unsloth_patches() -> None:
    result = subprocess.run(
        [sys.executable, "-c", IMPORTED_AFTER_ENTRY_POINTS],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert json.loads(result.stdout) == []


@pytest.mark.parametrize("stage", ["train", "benchmark"])
def test_a_stage_imports_unsloth_before_what_it_patches(stage: str, tmp_path: Path) -> None:
    fake = tmp_path / "fake" / "unsloth"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(FAKE_UNSLOTH)
    dataset = tmp_path / "data.jsonl"
    dataset.write_text("".join(json.dumps(ROW) + "\n" for _ in range(4)))
    store = LocalStore(tmp_path / "store")
    paths = RunPaths("ml", "order", 1)
    run_uri = write_run(store, paths, small_spec(str(dataset)))
    record = tmp_path / "record.json"
    env = trainer_env(FINETUNE_BACKEND="unsloth", UNSLOTH_RECORD=str(record))
    env["PYTHONPATH"] = f"{fake.parent}:{env.get('PYTHONPATH', '')}"
    result = subprocess.run(
        [sys.executable, "-c", ENTRY.format(stage=stage), run_uri],
        env=env,
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert json.loads(record.read_text()) == []  # nothing unsloth patches came before it
    assert result.returncode == EXIT_FAILED  # then: no GPU here, so unsloth cannot train
    error = store.get_json(paths.error)
    assert (error["reason"], error["message"]) == (
        "BackendUnavailable",
        "FINETUNE_BACKEND=unsloth but torch sees no GPU",
    )
