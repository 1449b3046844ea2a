"""Which package may import which: read from the source (no import runs), so the rules in
docs/architecture.md cannot rot. The operator image has no torch; the trainer image never
needs kopf; the cluster executor never reaches the local one."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGES = {
    "finetune_core": REPO / "core" / "finetune_core",
    "finetune_operator": REPO / "operator" / "finetune_operator",
    "finetune_trainer": REPO / "trainer" / "finetune_trainer",
    "finetune_cli": REPO / "cli" / "finetune_cli",
}
FORBIDDEN = {
    "finetune_core": {
        "kopf",
        "kubernetes",
        "torch",
        "transformers",
        "peft",
        "unsloth",
        "finetune_operator",
        "finetune_trainer",
        "finetune_cli",
    },
    "finetune_operator": {
        "torch",
        "transformers",
        "peft",
        "unsloth",
        "finetune_trainer",
        "finetune_cli",
    },
    "finetune_trainer": {"kopf", "kubernetes", "finetune_operator", "finetune_cli"},
    # The CLI reaches the operator and the trainer only lazily, inside its subcommands.
    "finetune_cli": {"kopf", "torch", "transformers", "peft", "unsloth"},
}


def top_level_imports(path: Path) -> set[str]:
    """Root package names imported anywhere in a module, except inside functions of the CLI's
    command table (lazy imports are how a subcommand keeps its dependencies to itself)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    lazy = path.name == "main.py" and path.parent.name == "finetune_cli"
    nodes = ast.walk(tree) if not lazy else iter(tree.body)
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_import_only_what_they_may(package: str) -> None:
    offenders = {
        str(path.relative_to(REPO)): sorted(top_level_imports(path) & FORBIDDEN[package])
        for path in sorted(PACKAGES[package].rglob("*.py"))
    }
    assert {path: names for path, names in offenders.items() if names} == {}
