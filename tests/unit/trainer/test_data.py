"""Dataset validation rules, the split, and fetching."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune_trainer.data import (
    DatasetError,
    LineProblem,
    fetch,
    read_conversations,
    read_numbered,
    split_conversations,
    split_indices,
)

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(DatasetError) as caught:
        read_conversations(path)
    return [str(problem) for problem in caught.value.problems]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"messages": [', "line 2: invalid JSON"),
        ("[1, 2]", 'line 2: expected a JSON object with a "messages" list'),
        ('{"text": "hi"}', 'line 2: missing "messages"'),
        ('{"messages": "hi"}', 'line 2: "messages" must be a list'),
        ('{"messages": []}', 'line 2: "messages" is empty'),
        (
            '{"messages": ["hi", {"role": "assistant", "content": "y"}]}',
            "line 2: messages[0]: expected an object",
        ),
        (
            '{"messages": [{"role": "tool", "content": "x"}, '
            '{"role": "assistant", "content": "y"}]}',
            "line 2: messages[0].role: 'tool' is not one of system, user, assistant",
        ),
        (
            '{"messages": [{"content": "x"}, {"role": "assistant", "content": "y"}]}',
            "line 2: messages[0].role: missing",
        ),
        (
            '{"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "y"}]}',
            "line 2: messages[0].content: not a string (int)",
        ),
        (
            '{"messages": [{"role": "user", "content": "x"}, '
            '{"role": "assistant", "content": " "}]}',
            "line 2: messages[1].content: empty",
        ),
        (
            '{"messages": [{"role": "user", "content": "x"}]}',
            "line 2: no assistant message: nothing to learn from",
        ),
        (
            '{"messages": [{"role": "user", "content": "x"}, {"role": "system", "content": "s"},'
            ' {"role": "assistant", "content": "y"}]}',
            "line 2: messages[1]: a system message may only be the first message",
        ),
    ],
)
def test_each_rule_names_the_line(tmp_path: Path, line: str, expected: str) -> None:
    path = write_lines(tmp_path / "d.jsonl", [json.dumps(GOOD), line, json.dumps(GOOD)])
    found = problems_of(path)
    assert len(found) == 1
    assert found[0].startswith(expected)


def test_valid_lines_keep_role_and_content_and_skip_blank_lines(tmp_path: Path) -> None:
    extra = {
        "id": 7,
        "messages": [{"role": "system", "content": "be brief", "name": "x"}, *GOOD["messages"]],
    }
    path = write_lines(tmp_path / "d.jsonl", [json.dumps(GOOD), "", "   ", json.dumps(extra)])
    numbered = read_numbered(path)
    assert [number for number, _ in numbered] == [1, 4]
    assert numbered[1][1][0] == {"role": "system", "content": "be brief"}


def test_not_utf8_and_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n\xff\xfe\n")
    assert problems_of(path) == ["line 2: not UTF-8 text: invalid start byte"]
    empty = write_lines(tmp_path / "e.jsonl", [""])
    assert problems_of(empty) == ["the dataset has no conversations"]


def test_every_problem_is_reported_but_only_twenty_listed(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "d.jsonl", ["nope"] * 25 + [json.dumps(GOOD)])
    with pytest.raises(DatasetError) as caught:
        read_conversations(path)
    assert len(caught.value.problems) == 25
    text = str(caught.value)
    assert text.splitlines()[0] == "d.jsonl: 25 problems"
    assert "line 20: invalid JSON" in text and "line 21:" not in text
    assert text.endswith("... and 5 more")


def test_problem_for_the_whole_file_has_no_line_number() -> None:
    assert str(LineProblem(0, "empty")) == "empty"
    assert str(LineProblem(3, "bad")) == "line 3: bad"


def test_split_is_deterministic_disjoint_and_sized() -> None:
    rows = [[{"role": "assistant", "content": str(i)}] for i in range(50)]
    train, validation = split_conversations(rows, 0.1, seed=3407)
    assert (train, validation) == split_conversations(rows, 0.1, seed=3407)
    assert len(validation) == 5 and len(train) == 45
    assert sorted(r[0]["content"] for r in train + validation) == sorted(str(i) for i in range(50))
    assert split_conversations(rows, 0.1, seed=1)[1] != validation


@pytest.mark.parametrize(("rows", "split", "held_out"), [(2, 0.1, 1), (3, 0.4, 1), (10, 0.49, 5)])
def test_split_holds_out_at_least_one_and_leaves_one(
    rows: int, split: float, held_out: int
) -> None:
    train, validation = split_indices(rows, split, seed=0)
    assert len(validation) == held_out and len(train) == rows - held_out


def test_split_needs_two_rows() -> None:
    with pytest.raises(DatasetError, match="at least 2 conversations"):
        split_indices(1, 0.1, seed=0)


def test_fetch_local_paths(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "d.jsonl", [json.dumps(GOOD)])
    assert fetch(str(path), tmp_path / "x") == path
    assert fetch(f"file://{path}", tmp_path / "x") == path
    with pytest.raises(DatasetError, match="no such file"):
        fetch(str(tmp_path / "missing.jsonl"), tmp_path / "x")
