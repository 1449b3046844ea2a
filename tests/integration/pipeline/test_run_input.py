"""`finetune run|show` on input they must refuse: clear errors, exit 1, nothing created."""

from __future__ import annotations

from pathlib import Path

from tests.integration.pipeline.runner import finetune, write_manifest


def test_invalid_manifest_names_every_field_and_runs_nothing(tmp_path: Path) -> None:
    def break_it(doc: dict) -> None:
        doc["spec"]["lora"] = {"r": 0}
        doc["spec"]["benchmark"]["sla"][1]["maxLatencySeconds"] = -1
        doc["spec"]["training"]["maxStep"] = 3  # a typo

    manifest = write_manifest(tmp_path / "manifests", break_it)
    result = finetune("run", str(manifest), cwd=tmp_path, timeout=60)
    assert result.returncode == 1, result.stdout
    lines = result.stdout.splitlines()
    assert f"{manifest}: spec.lora.r: must be >= 1" in lines
    assert any(
        line.startswith(f"{manifest}: spec.benchmark.sla[1].maxLatencySeconds: must be > 0")
        for line in lines
    )
    assert any(
        line.startswith(f"{manifest}: spec.training.maxStep: unknown field") for line in lines
    )
    assert len(lines) == 3
    assert not (tmp_path / ".finetune").exists()  # the default store was never created


def test_missing_dataset_file_is_named_before_anything_runs(tmp_path: Path) -> None:
    def elsewhere(doc: dict) -> None:
        doc["spec"]["dataset"]["uri"] = "data/missing.jsonl"

    manifest = write_manifest(tmp_path / "m", elsewhere)
    result = finetune(
        "run", str(manifest), "--store", str(tmp_path / "store"), cwd=tmp_path, timeout=60
    )
    assert result.returncode == 1
    expected = (
        f"{manifest}: spec.dataset.uri: no such file: {tmp_path / 'm' / 'data/missing.jsonl'}"
    )
    assert expected in result.stdout.splitlines()
    assert not (tmp_path / "store").exists()


def test_unreadable_manifest_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "two.yaml").write_text("a: 1\n---\nb: [\n")
    result = finetune("run", "two.yaml", cwd=tmp_path, timeout=60)
    assert result.returncode == 1
    assert result.stdout.startswith("two.yaml: (yaml): ")
    assert "Traceback" not in result.stdout

    result = finetune("run", "absent.yaml", cwd=tmp_path, timeout=60)
    assert result.returncode == 1
    assert result.stdout.strip() == "absent.yaml: (file): No such file or directory"
    assert not (tmp_path / ".finetune").exists()


def test_show_unknown_run_exits_1_with_a_clear_message(tmp_path: Path) -> None:
    result = finetune("show", "nope", "--store", str(tmp_path / "store"), cwd=tmp_path, timeout=60)
    assert result.returncode == 1
    assert f"no run named 'nope' in {tmp_path / 'store'}" in result.stdout
    result = finetune("runs", "--store", str(tmp_path / "store"), cwd=tmp_path, timeout=60)
    assert result.returncode == 0
    assert f"No runs in {tmp_path / 'store'}" in result.stdout
