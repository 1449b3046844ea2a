"""Chat template and loss masking: only assistant turns (and their end marker) are trained."""

from __future__ import annotations

from typing import Any

import pytest

from finetune_core.presets import SMOLLM2_MODEL_ID
from finetune_trainer.data import DatasetError
from finetune_trainer.encoding import (
    IGNORE_INDEX,
    EncodedRow,
    PadCollator,
    TemplateError,
    assistant_spans,
    encode_conversation,
    encode_dataset,
    label_tokens,
)

MULTI_TURN = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Is 2 prime?"},
    {"role": "assistant", "content": "Yes."},
    {"role": "user", "content": "Is 9 prime? Yes or no."},
    {"role": "assistant", "content": "No: 9 = 3 * 3."},
]
RENDERED = (
    "<s>[SYS]Be brief.[/SYS][U]Is 2 prime?[/U][A]Yes.</s>[U]Is 9 prime? Yes or no.[/U]"
    "[A]No: 9 = 3 * 3.</s>"
)


def test_assistant_spans_cover_content_and_end_marker_in_order() -> None:
    spans = assistant_spans(RENDERED, MULTI_TURN, "</s>")
    assert [RENDERED[a:b] for a, b in spans] == ["Yes.</s>", "No: 9 = 3 * 3.</s>"]


def test_assistant_text_quoted_in_an_earlier_turn_is_not_matched_there() -> None:
    # The reply also occurs inside the user's turn: it is searched for after that turn.
    conversation = [
        {"role": "user", "content": "Say No: 9 = 3 * 3. please"},
        {"role": "assistant", "content": "No: 9 = 3 * 3."},
    ]
    text = "[U]Say No: 9 = 3 * 3. please[/U][A]No: 9 = 3 * 3.</s>"
    ((start, end),) = assistant_spans(text, conversation, "</s>")
    assert start == text.index("[A]") + 3 and text[start:end] == "No: 9 = 3 * 3.</s>"


def test_stripped_content_and_missing_system_prompt_are_tolerated() -> None:
    conversation = [
        {"role": "system", "content": "dropped"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "  hello  "},
    ]
    text = "[U]hi[/U][A]hello</s>"
    assert [text[a:b] for a, b in assistant_spans(text, conversation, "</s>")] == ["hello</s>"]


def test_assistant_content_missing_from_the_template_is_an_error() -> None:
    with pytest.raises(TemplateError, match=r"messages\[1\]"):
        assistant_spans(
            "[U]hi[/U]",
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
            "</s>",
        )


def test_label_tokens_by_token_start() -> None:
    ids = [10, 11, 12, 13, 14]
    offsets = [(0, 3), (3, 5), (5, 8), (8, 8), (8, 12)]  # (8, 8): a zero-width special token
    assert label_tokens(ids, offsets, [(3, 8)]) == [
        IGNORE_INDEX,
        11,
        12,
        IGNORE_INDEX,
        IGNORE_INDEX,
    ]


def test_collator_pads_inputs_and_ignores_padding_in_labels() -> None:
    batch = PadCollator(pad_token_id=0)(
        [EncodedRow([5, 6, 7], [IGNORE_INDEX, 6, 7]), EncodedRow([8], [8])]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    from finetune_trainer.modeling import local_model_path

    return AutoTokenizer.from_pretrained(local_model_path(SMOLLM2_MODEL_ID))


def trained_segments(tokenizer: Any, row: EncodedRow) -> list[str]:
    segments: list[list[int]] = []
    previous = IGNORE_INDEX
    for label in row.labels:
        if label != IGNORE_INDEX:
            if previous == IGNORE_INDEX:
                segments.append([])
            segments[-1].append(label)
        previous = label
    return [tokenizer.decode(segment) for segment in segments]


@pytest.mark.slow
def test_smollm2_template_trains_every_assistant_turn_only(tokenizer: Any) -> None:
    row = encode_conversation(tokenizer, MULTI_TURN)
    assert trained_segments(tokenizer, row) == ["Yes.<|im_end|>", "No: 9 = 3 * 3.<|im_end|>"]
    assert (
        row.input_ids
        == tokenizer.apply_chat_template(MULTI_TURN, tokenize=True, return_dict=True)["input_ids"]
    )
    assert all(
        label in (IGNORE_INDEX, token)
        for token, label in zip(row.input_ids, row.labels, strict=True)
    )


@pytest.mark.slow
def test_too_long_conversations_truncated_and_counted_or_rejected(tokenizer: Any) -> None:
    long_reply = "word " * 200
    numbered = [
        (1, MULTI_TURN),
        (3, [{"role": "user", "content": "talk"}, {"role": "assistant", "content": long_reply}]),
        (4, [{"role": "user", "content": "x " * 300}, {"role": "assistant", "content": "ok"}]),
    ]
    encoded = encode_dataset(tokenizer, numbered, max_seq_length=64, too_long="truncate")
    assert encoded.truncated == 2
    assert [len(row.input_ids) if row else None for row in encoded.rows][1:] == [64, None]
    assert encoded.select([0, 1, 2]) == [encoded.rows[0], encoded.rows[1]]  # line 4: nothing left

    with pytest.raises(DatasetError) as caught:
        encode_dataset(tokenizer, numbered, max_seq_length=64, too_long="reject", source="d.jsonl")
    problems = [str(problem) for problem in caught.value.problems]
    assert [p.split(":")[0] for p in problems] == ["line 3", "line 4"]
    assert "longer than model.maxSeqLength 64" in problems[0]
