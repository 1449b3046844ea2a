"""Conversations to training tensors: the model's chat template, loss on assistant tokens.

The conversation is rendered once with the tokenizer's chat template and tokenized with
character offsets. Each message's content is then located in the rendered text, in order,
and a token is trained on when it starts inside an assistant message's content or the
end-of-turn marker right after it (so the model learns to stop). Everything else (system
prompt, user turns, role headers, padding) gets the label IGNORE_INDEX.

Locating contents in the rendered text, instead of rendering growing prefixes of the
conversation, works for templates that change earlier turns when a later one is added (e.g.
ones that drop the reasoning of earlier assistant turns) and needs no `{% generation %}`
markers in the template.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from finetune_trainer.data import Conversation, DatasetError, LineProblem, split_indices

IGNORE_INDEX = -100


@dataclass(frozen=True)
class EncodedRow:
    """One conversation as token ids and labels (IGNORE_INDEX where no loss is taken)."""

    input_ids: list[int]
    labels: list[int]

    @property
    def trained_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


@dataclass
class EncodedDataset:
    """Every conversation encoded, in file order; None where truncation left nothing to
    train on. `truncated` counts the conversations cut to the length limit."""

    rows: list[EncodedRow | None] = field(default_factory=list)
    truncated: int = 0

    def select(self, indices: list[int]) -> list[EncodedRow]:
        return [row for i in indices if (row := self.rows[i]) is not None]


class TemplateError(ValueError):
    """The chat template's output does not contain a message's content."""


def assistant_spans(
    text: str, conversation: Conversation, end_of_turn: str | None
) -> list[tuple[int, int]]:
    """Character ranges of the assistant contents in a rendered conversation (with the
    end-of-turn marker when it follows the content directly). Templates may strip
    surrounding whitespace, so the stripped content is searched for."""
    spans: list[tuple[int, int]] = []
    cursor = 0
    for index, message in enumerate(conversation):
        content = message["content"].strip()
        start = text.find(content, cursor)
        if start < 0:
            if message["role"] == "assistant":
                raise TemplateError(
                    f"messages[{index}]: the chat template's output does not contain this "
                    "assistant message's content"
                )
            continue  # some templates fold or drop system prompts
        end = start + len(content)
        if message["role"] == "assistant":
            if end_of_turn and text.startswith(end_of_turn, end):
                end += len(end_of_turn)
            spans.append((start, end))
        cursor = end
    return spans


def label_tokens(
    input_ids: Sequence[int], offsets: Sequence[tuple[int, int]], spans: list[tuple[int, int]]
) -> list[int]:
    """Labels for a token sequence: the id where the token starts inside a span, else
    IGNORE_INDEX. `offsets` are the tokens' (start, end) characters in the rendered text."""
    labels = []
    for token, (start, end) in zip(input_ids, offsets, strict=True):
        inside = end > start and any(lo <= start < hi for lo, hi in spans)
        labels.append(token if inside else IGNORE_INDEX)
    return labels


def encode_conversation(tokenizer: Any, conversation: Conversation) -> EncodedRow:
    """Render with the chat template and label the assistant tokens (no truncation)."""
    text = tokenizer.apply_chat_template(conversation, tokenize=False)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    spans = assistant_spans(text, conversation, tokenizer.eos_token)
    input_ids = list(encoding["input_ids"])
    return EncodedRow(input_ids, label_tokens(input_ids, encoding["offset_mapping"], spans))


def encode_dataset(
    tokenizer: Any,
    numbered: list[tuple[int, Conversation]],
    max_seq_length: int,
    too_long: str,
    source: str = "dataset",
) -> EncodedDataset:
    """Encode every conversation, applying the dataset's too-long policy.

    "truncate" cuts a conversation to max_seq_length tokens and counts it; one left with no
    assistant token is dropped (still counted). "reject" makes every over-long conversation
    a problem. DatasetError lists every problem with its line number.
    """
    result = EncodedDataset()
    problems: list[LineProblem] = []
    for line, conversation in numbered:
        try:
            row = encode_conversation(tokenizer, conversation)
        except Exception as error:  # a template may raise anything (jinja, ValueError, ...)
            problems.append(LineProblem(line, f"chat template: {error}"))
            continue
        if len(row.input_ids) > max_seq_length:
            if too_long == "reject":
                problems.append(
                    LineProblem(
                        line,
                        f"{len(row.input_ids)} tokens after the chat template, longer than "
                        f"model.maxSeqLength {max_seq_length} (dataset.tooLong: reject)",
                    )
                )
                continue
            result.truncated += 1
            row = EncodedRow(row.input_ids[:max_seq_length], row.labels[:max_seq_length])
        result.rows.append(row if row.trained_tokens else None)
    if problems:
        raise DatasetError(problems, source)
    return result


@dataclass(frozen=True)
class EncodedSplits:
    """The encoded training and validation splits, and the dataset facts metrics.json
    reports."""

    train: list[EncodedRow]
    eval: list[EncodedRow]
    truncated: int


def encode_splits(
    tokenizer: Any,
    numbered: list[tuple[int, Conversation]],
    max_seq_length: int,
    too_long: str,
    split: tuple[float, int],
    source: str = "dataset",
) -> EncodedSplits:
    """Encode every conversation (see encode_dataset) and split them by (validationSplit,
    seed), as the benchmark splits them; DatasetError when a split ends up empty."""
    encoded = encode_dataset(tokenizer, numbered, max_seq_length, too_long, source)
    train, held_out = split_indices(len(numbered), *split)
    splits = EncodedSplits(encoded.select(train), encoded.select(held_out), encoded.truncated)
    if not splits.train or not splits.eval:
        problem = "no conversation left to train or evaluate on after cutting to maxSeqLength"
        raise DatasetError([LineProblem(0, problem)], source)
    return splits


class PadCollator:
    """Batches rows padded to the longest: pad id in inputs, IGNORE_INDEX in labels."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[EncodedRow]) -> dict[str, torch.Tensor]:
        width = max(len(row.input_ids) for row in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for index, row in enumerate(rows):
            length = len(row.input_ids)
            input_ids[index, :length] = torch.tensor(row.input_ids)
            labels[index, :length] = torch.tensor(row.labels)
            attention[index, :length] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}
