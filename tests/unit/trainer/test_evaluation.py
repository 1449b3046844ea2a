"""Held-out evaluation and review answers: what is scored, bits per byte, the review sample
and the text-overlap scorers (sacrebleu, rouge-score)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from finetune_core.api import FineTuneJobSpec, ResolvedSpec
from finetune_core.presets import SMOLLM2_MODEL_ID
from finetune_trainer.data import split_indices
from finetune_trainer.encoding import IGNORE_INDEX, encode_conversation
from finetune_trainer.evaluation import (
    Likelihood,
    ScoredRow,
    bleu,
    covered_bytes,
    held_out_rows,
    length_batches,
    likelihood,
    read_held_out,
    review_prompt,
    review_sample,
    rouge_l,
    score_row,
    score_rows,
)
from finetune_trainer.stage import StageFailure

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Café or tea?"},
    {"role": "assistant", "content": "Café, s'il vous plaît — ☕."},
]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    from finetune_trainer.modeling import local_model_path

    return AutoTokenizer.from_pretrained(local_model_path(SMOLLM2_MODEL_ID))


def spec_for(dataset: str, evaluation: dict[str, Any] | None = None) -> ResolvedSpec:
    return FineTuneJobSpec.model_validate(
        {
            "model": {"preset": "smollm2-135m"},
            "dataset": {"uri": dataset},
            "evaluation": evaluation or {},
        }
    ).resolve()


def test_covered_bytes_count_each_character_once_in_utf8() -> None:
    text = "aé☕b"  # 1 + 2 + 3 + 1 bytes
    # Two tokens share the multi-byte character, as a byte-level tokenizer may split it.
    offsets = [(0, 1), (1, 3), (2, 3), (3, 4)]
    assert covered_bytes(text, offsets, [IGNORE_INDEX, 7, 8, IGNORE_INDEX]) == 5
    assert covered_bytes(text, offsets, [1, 2, 3, 4]) == 7


def test_the_scored_tokens_are_the_trainers_and_their_bytes_are_the_answers(
    tokenizer: Any,
) -> None:
    row, cut = score_row(tokenizer, CHAT, 4096)
    trained = encode_conversation(tokenizer, CHAT)
    assert not cut
    assert (row.input_ids, row.labels) == (trained.input_ids, trained.labels)
    answer = CHAT[-1]["content"] + tokenizer.eos_token  # the content and its end-of-turn marker
    assert row.label_bytes == len(answer.encode())


def test_a_row_cut_to_max_seq_length_counts_only_what_is_left(tokenizer: Any) -> None:
    full, _ = score_row(tokenizer, CHAT, 4096)
    length = len(full.input_ids) - 3
    cut, was_cut = score_row(tokenizer, CHAT, length)
    assert was_cut and len(cut.input_ids) == length
    assert 0 < cut.label_bytes < full.label_bytes


def test_too_long_reject_names_the_line(tokenizer: Any) -> None:
    from finetune_trainer.data import DatasetError

    with pytest.raises(DatasetError, match=r"line 7: longer than model\.maxSeqLength 16"):
        score_rows(tokenizer, [(7, CHAT)], 16, "reject", "held-out.jsonl")


def test_bits_per_byte_is_the_nll_in_bits_over_the_bytes() -> None:
    measured = Likelihood(nll=100 * math.log(2), tokens=40, bytes=200)
    assert measured.bits_per_byte == pytest.approx(0.5)
    assert measured.eval_loss == pytest.approx(100 * math.log(2) / 40)
    assert measured.perplexity == pytest.approx(math.exp(measured.eval_loss or 0))
    empty = Likelihood(0.0, 0, 0)
    assert (empty.eval_loss, empty.perplexity, empty.bits_per_byte) == (None, None, None)


def test_the_review_prompt_ends_before_the_last_answer() -> None:
    conversation = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "What is pip?"},
        {"role": "assistant", "content": "Python's package installer."},
    ]
    prompt = review_prompt(conversation)
    assert prompt is not None
    assert prompt.messages == conversation[:3]
    assert (prompt.question, prompt.reference) == ("What is pip?", "Python's package installer.")
    assert review_prompt([{"role": "assistant", "content": "Unprompted."}]) is None


def test_the_review_sample_is_fixed_by_the_seed() -> None:
    rows = [
        (n, [{"role": "user", "content": f"q{n}"}, {"role": "assistant", "content": f"a{n}"}])
        for n in range(1, 31)
    ]
    first = [p.reference for p in review_sample(rows, 8, seed=3407)]
    assert first == [p.reference for p in review_sample(rows, 8, seed=3407)]
    assert first != [p.reference for p in review_sample(rows, 8, seed=1)]
    assert len(first) == 8 and len(set(first)) == 8
    assert first == sorted(first, key=lambda a: int(a[1:]))  # in split order
    assert len(review_sample(rows[:3], 8, seed=3407)) == 3


def test_the_scorers_reward_overlap_on_their_own_scales() -> None:
    references = ["use a virtual environment for each project", "pip installs packages"]
    assert bleu(references, references) == pytest.approx(100.0)
    assert rouge_l(references, references) == pytest.approx(1.0)
    unrelated = ["the weather is nice today", "bananas are yellow"]
    assert bleu(unrelated, references) < 5
    assert rouge_l(unrelated, references) < 0.2
    partial = ["create a virtual environment for the project", "pip installs python packages"]
    assert 0.5 < rouge_l(partial, references) < 1.0


def test_the_held_out_dataset_is_validated_with_line_numbers(
    tokenizer: Any, tmp_path: Path
) -> None:
    held_out = tmp_path / "held-out.jsonl"
    held_out.write_text('{"messages": [{"role": "user", "content": "hi"}]}\nnot json\n')
    spec = spec_for(str(dataset(tmp_path)), {"dataset": {"uri": str(held_out)}})
    with pytest.raises(StageFailure) as failure:
        read_held_out(spec, tmp_path)
    assert failure.value.reason == "InvalidEvaluationDataset"
    message = str(failure.value)
    assert message.startswith("spec.evaluation.dataset: held-out.jsonl: 2 problems")
    assert "line 1: no assistant message" in message
    assert "line 2: invalid JSON" in message


def test_without_a_held_out_dataset_the_validation_split_is_evaluated(
    tokenizer: Any, tmp_path: Path
) -> None:
    spec = spec_for(str(dataset(tmp_path)))
    held_out = read_held_out(spec, tmp_path)
    assert held_out.label == "validation split"
    assert held_out.numbered == held_out.validation
    _, trainers = split_indices(10, spec.dataset.validation_split, spec.seed)
    assert [line for line, _ in held_out.numbered] == [i + 1 for i in trainers]  # its split
    rows = held_out_rows(spec, tokenizer, held_out)
    assert len(rows) == 1 and rows[0].label_bytes


def test_a_pinned_held_out_dataset_that_changed_is_refused(tmp_path: Path) -> None:
    held_out = dataset(tmp_path, "held-out.jsonl")
    spec = spec_for(str(dataset(tmp_path)), {"dataset": {"uri": str(held_out), "sha256": "0" * 64}})
    with pytest.raises(StageFailure) as failure:
        read_held_out(spec, tmp_path)
    assert failure.value.reason == "DatasetChanged"
    assert str(failure.value).startswith("spec.evaluation.dataset: ")


def dataset(directory: Path, name: str = "train.jsonl", rows: int = 10) -> Path:
    path = directory / name
    path.write_text("".join(json.dumps({"messages": CHAT}) + "\n" for _ in range(rows)))
    return path


def test_length_batches_group_similar_lengths_within_the_budget() -> None:
    rows = [ScoredRow([0] * n, [0] * n, n) for n in (5, 30, 6, 7, 29, 100)]
    batches = length_batches(rows, max_tokens=60)
    assert [[len(r.input_ids) for r in batch] for batch in batches] == [
        [5, 6, 7],
        [29, 30],
        [100],  # longer than the budget: alone
    ]


@pytest.mark.slow
def test_batched_likelihood_equals_one_conversation_at_a_time(tokenizer: Any) -> None:
    """Padding changes nothing: the pads are masked and never scored."""
    import torch
    from transformers import AutoModelForCausalLM

    from finetune_trainer.modeling import local_model_path

    model = AutoModelForCausalLM.from_pretrained(
        local_model_path(SMOLLM2_MODEL_ID), dtype=torch.float32
    ).eval()
    short = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    rows = [score_row(tokenizer, chat, 4096)[0] for chat in (CHAT, short, CHAT[1:])]
    pad = tokenizer.pad_token_id or tokenizer.eos_token_id
    alone = likelihood(model, rows, "cpu", pad, max_tokens=1)
    together = likelihood(model, rows, "cpu", pad, max_tokens=10_000)
    assert (alone.tokens, alone.bytes) == (together.tokens, together.bytes)
    assert together.tokens == sum(
        sum(label != IGNORE_INDEX for label in row.labels[1:]) for row in rows
    )
    assert together.nll == pytest.approx(alone.nll, rel=1e-4)
