"""Property: any bytes given as a dataset are conversations with their line numbers, or a
DatasetError whose problems each name a line of the file (0: the file as a whole); never
another exception."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from finetune_trainer.data import ALLOWED_ROLES, DatasetError, read_numbered

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]}
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
MESSAGES = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from([*ALLOWED_ROLES, "tool", ""]) | JSON_VALUES,
        "content": st.text(max_size=12) | JSON_VALUES,
    },
)
# Lines near the rules: conversation-shaped objects with any roles and contents.
CONVERSATIONS = st.dictionaries(
    st.sampled_from(["messages", "meta"]), st.lists(MESSAGES | JSON_VALUES, max_size=4)
).map(json.dumps)
LINES = (
    CONVERSATIONS
    | JSON_VALUES.map(lambda value: json.dumps(value))
    | st.just(json.dumps(GOOD))
    | st.text(max_size=20)
)
FILES = st.binary(max_size=300) | st.lists(LINES, max_size=6).map(
    lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass")
)


def check_read(path: Path, content: bytes) -> None:
    path.write_bytes(content)
    lines = content.split(b"\n")
    try:
        rows = read_numbered(path)
    except DatasetError as error:
        assert error.problems
        for problem in error.problems:
            assert 0 <= problem.line <= len(lines), problem
            assert len(str(problem).splitlines()) == 1, f"not one line: {str(problem)!r}"
    else:
        assert rows
        for number, conversation in rows:
            assert 1 <= number <= len(lines)
            assert any(message["role"] == "assistant" for message in conversation)
            for message in conversation:
                assert message["role"] in ALLOWED_ROLES
                assert isinstance(message["content"], str) and message["content"].strip()


@settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(FILES)
def test_any_bytes_are_rows_or_line_numbered_problems(tmp_path: Path, content: bytes) -> None:
    check_read(tmp_path / "data.jsonl", content)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("[" * (sys.getrecursionlimit() + 100), "line 2: invalid JSON: nested too deeply"),
        ('{"messages": ' + "9" * 5000 + "}", "line 2: invalid JSON: a number with too many digits"),
    ],
    ids=["nested-too-deeply", "too-many-digits"],
)
def test_json_python_cannot_read_is_a_line_problem(tmp_path: Path, line: str, problem: str) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(DatasetError) as raised:
        read_numbered(path)
    [found] = raised.value.problems
    assert str(found) == problem
