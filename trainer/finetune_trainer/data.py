"""The training data: chat conversations in JSONL, validated line by line before any model
is loaded, and split deterministically into training and validation rows.

Rules for a line: a JSON object with a non-empty `messages` list; every message an object
with a `role` in ALLOWED_ROLES and a non-empty string `content`; a `system` message only as
the first message; at least one `assistant` message. Other keys are ignored (metadata).

The `tool` role is rejected: a tool turn only makes sense together with the assistant's
structured tool call, which a plain {role, content} message cannot carry, and chat templates
(SmolLM2's among them) render tool turns differently or not at all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

Message = dict[str, str]
Conversation = list[Message]

ALLOWED_ROLES = ("system", "user", "assistant")
MAX_LISTED_PROBLEMS = 20


@dataclass(frozen=True)
class LineProblem:
    """One problem, on a 1-based line of the file (0: the file as a whole)."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line else self.message


class DatasetError(ValueError):
    """The dataset cannot be trained on; `problems` names every bad line."""

    def __init__(self, problems: list[LineProblem], source: str = "dataset"):
        self.problems = problems
        self.source = source
        super().__init__(self._describe())

    def _describe(self) -> str:
        count = len(self.problems)
        lines = [f"{self.source}: {count} problem{'s' if count != 1 else ''}"]
        lines += [f"  {problem}" for problem in self.problems[:MAX_LISTED_PROBLEMS]]
        if count > MAX_LISTED_PROBLEMS:
            lines.append(f"  ... and {count - MAX_LISTED_PROBLEMS} more")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self._describe()


def check_conversation(
    value: object, require_assistant: bool = True
) -> tuple[Conversation | None, list[str]]:
    """Validate one parsed line: the conversation (role and content only), or its problems.

    Benchmark prompts files pass require_assistant=False: a prompt needs no answer."""
    if not isinstance(value, dict):
        return None, ['expected a JSON object with a "messages" list']
    messages = value.get("messages")
    if messages is None:
        return None, ['missing "messages"']
    if not isinstance(messages, list):
        return None, ['"messages" must be a list']
    if not messages:
        return None, ['"messages" is empty']
    problems: list[str] = []
    conversation: Conversation = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            problems.append(f"{where}: expected an object with role and content")
            continue
        role, content = message.get("role"), message.get("content")
        if role not in ALLOWED_ROLES:
            problems.append(
                f"{where}.role: {role!r} is not one of {', '.join(ALLOWED_ROLES)}"
                if role is not None
                else f"{where}.role: missing"
            )
        elif role == "system" and index != 0:
            problems.append(f"{where}: a system message may only be the first message")
        if not isinstance(content, str):
            kind = "missing" if content is None else f"not a string ({type(content).__name__})"
            problems.append(f"{where}.content: {kind}")
        elif not content.strip():
            problems.append(f"{where}.content: empty")
        if isinstance(role, str) and isinstance(content, str):
            conversation.append({"role": role, "content": content})
    if require_assistant and not any(
        m.get("role") == "assistant" for m in messages if isinstance(m, dict)
    ):
        problems.append("no assistant message: nothing to learn from")
    return (None, problems) if problems else (conversation, [])


def read_conversations(path: Path, require_assistant: bool = True) -> list[Conversation]:
    """Every conversation in a JSONL file; DatasetError listing every bad line otherwise."""
    return [conversation for _, conversation in read_numbered(path, require_assistant)]


def read_numbered(path: Path, require_assistant: bool = True) -> list[tuple[int, Conversation]]:
    """Every conversation with its line number (from 1); DatasetError listing every bad line.

    Blank lines are skipped.
    """
    rows: list[tuple[int, Conversation]] = []
    problems: list[LineProblem] = []
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                problems.append(LineProblem(number, f"not UTF-8 text: {error.reason}"))
                continue
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as error:
                problems.append(
                    LineProblem(number, f"invalid JSON: {error.msg} (column {error.colno})")
                )
                continue
            except RecursionError:
                problems.append(LineProblem(number, "invalid JSON: nested too deeply"))
                continue
            except ValueError:  # an integer longer than Python converts (4300 digits)
                problems.append(LineProblem(number, "invalid JSON: a number with too many digits"))
                continue
            conversation, found = check_conversation(value, require_assistant)
            problems += [LineProblem(number, text) for text in found]
            if conversation is not None:
                rows.append((number, conversation))
    if not problems and not rows:
        problems.append(LineProblem(0, "the dataset has no conversations"))
    if problems:
        raise DatasetError(problems, path.name)
    return rows


def validation_count(rows: int, validation_split: float) -> int:
    """Rows held out: the fraction rounded, at least one, leaving at least one to train on."""
    return min(max(1, round(rows * validation_split)), rows - 1)


def split_indices(rows: int, validation_split: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, validation) row indices, each in file order; which rows are held out is drawn
    with the seed, so the same count, split and seed always give the same halves."""
    if rows < 2:
        raise DatasetError(
            [
                LineProblem(
                    0, f"need at least 2 conversations to hold some out for validation, got {rows}"
                )
            ]
        )
    held_out = set(
        random.Random(seed).sample(range(rows), validation_count(rows, validation_split))
    )
    return [i for i in range(rows) if i not in held_out], sorted(held_out)


def split_conversations(
    rows: list[Conversation], validation_split: float, seed: int
) -> tuple[list[Conversation], list[Conversation]]:
    """(train, validation) conversations, deterministic for a seed (see split_indices)."""
    train, validation = split_indices(len(rows), validation_split, seed)
    return [rows[i] for i in train], [rows[i] for i in validation]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def etag(uri: str) -> str | None:
    """The object store's ETag of a dataset (None for a local file, or when it cannot be
    read): with the sha256, what the run's metrics record about the data it trained on."""
    from finetune_core.store import open_object

    try:
        store, key = open_object(uri)
        return store.etag(key)
    except Exception as error:  # recorded when known; never a reason to fail the run
        log.warning("could not read the ETag of %s: %s", uri, error)
        return None


def fetch(uri: str, dest_dir: Path) -> Path:
    """A local copy of a dataset (s3://bucket/key, file:///path or a path): an object store's
    file is downloaded into dest_dir (credentials and endpoint from the environment); a
    local file is used in place."""
    from finetune_core.store import LocalStore, NotFound, open_object

    try:
        store, key = open_object(uri)
    except ValueError as error:
        raise DatasetError([LineProblem(0, str(error))], uri) from None
    if isinstance(store, LocalStore):
        path = Path(store.uri(key))
        if not path.is_file():
            raise DatasetError([LineProblem(0, f"no such file: {path}")], uri)
        return path
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / Path(key).name
    try:
        store.get_file(key, target)
    except NotFound:
        raise DatasetError([LineProblem(0, f"no such object: {uri}")], uri) from None
    return target
