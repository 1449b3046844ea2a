"""The README's field reference is generated from the API models and must not drift."""

from __future__ import annotations

from finetune_core.reference import BEGIN, END, embed, field_reference
from tests.conftest import REPO


def test_readme_reference_matches_the_models() -> None:
    readme = (REPO / "README.md").read_text()
    assert embed(readme) == readme, "README field reference is stale: run `make reference`"


def test_reference_lists_nested_fields_with_descriptions() -> None:
    table = field_reference()
    assert "| `spec.lora.r` | integer |" in table
    assert "`spec.benchmark.sla[].maxLatencySeconds`" in table
    for row in table.splitlines()[2:]:
        assert row.rstrip(" |").split("|")[-1].strip(), f"no description: {row}"
    assert BEGIN not in table and END not in table
