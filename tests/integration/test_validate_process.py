"""`finetune validate` as a process on generated files: exit 0 with the count, or exit 1
with one line per problem, each naming its file; never a traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.cli import finetune
from tests.unit.core.test_manifest_properties import DOCUMENTS, dump


def check_validate(paths: list[Path]) -> None:
    result = finetune("validate", *map(str, paths), timeout=120)
    lines = result.stdout.splitlines()
    assert "Traceback" not in result.stdout, result.stdout
    if result.returncode == 0:
        assert lines == [f"{len(paths)} manifest(s) valid"]
    else:
        assert result.returncode == 1, result.stdout
        assert lines, "exit 1 without a problem"
        prefixes = tuple(f"{path}" for path in paths)
        assert all(line.startswith(prefixes) for line in lines), result.stdout


@settings(
    max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(DOCUMENTS, min_size=1, max_size=4))
def test_generated_files(tmp_path: Path, documents: list[Any]) -> None:
    paths = []
    for index, text in enumerate(filter(None, map(dump, documents))):
        paths.append(tmp_path / f"job{index}.yaml")
        paths[-1].write_text(text, encoding="utf-8")
    if paths:
        check_validate(paths)


def test_files_that_are_not_yaml(tmp_path: Path) -> None:
    depth = 1000  # overflows the default stack of a new interpreter
    files = {
        "latin1.yaml": "metadata: {name: caf\xe9}\n".encode("latin-1"),
        "nul.yaml": b"kind: \x00\n",
        "deep.yaml": ("spec: " + "[" * depth + "]" * depth + "\n").encode(),
        "unclosed.yaml": b"spec: {model: [\n",
    }
    paths = []
    for name, content in files.items():
        paths.append(tmp_path / name)
        paths[-1].write_bytes(content)
    check_validate(paths)
    result = finetune("validate", *map(str, paths), timeout=120)
    assert len(result.stdout.splitlines()) == len(paths)  # one problem per unreadable file
