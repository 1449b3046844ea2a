"""`finetune run` resolves spec.evaluation.dataset like spec.dataset: relative to the
manifest, and a missing file is a problem of its field."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune_cli.local.manifest import load_job
from finetune_core.manifest import InvalidManifest
from tests.integration.pipeline.runner import write_manifest


def test_the_held_out_dataset_is_resolved_against_the_manifest(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "held-out.jsonl").write_text('{"messages": []}\n')

    def edit(doc: dict) -> None:
        doc["spec"]["evaluation"] = {"dataset": {"uri": "data/held-out.jsonl"}, "samples": 2}

    loaded = load_job(write_manifest(tmp_path, edit))
    assert loaded.spec.evaluation.dataset is not None
    assert loaded.spec.evaluation.dataset.uri == f"file://{tmp_path.resolve()}/data/held-out.jsonl"
    assert loaded.spec.evaluation.samples == 2


def test_a_missing_held_out_file_names_its_field(tmp_path: Path) -> None:
    def edit(doc: dict) -> None:
        doc["spec"]["evaluation"] = {"dataset": {"uri": "data/absent.jsonl"}}

    with pytest.raises(InvalidManifest) as invalid:
        load_job(write_manifest(tmp_path, edit))
    (problem,) = invalid.value.problems
    assert problem.path == "spec.evaluation.dataset.uri"
    assert "no such file" in problem.message
