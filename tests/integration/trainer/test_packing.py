"""Packed rows on the real SmolLM2 model: a conversation packed behind others gets the
logits it gets alone, and a packed batch's loss is the padded batch's."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from finetune_core.api import FineTuneJobSpec
from finetune_trainer import data
from finetune_trainer.encoding import EncodedRow, PadCollator, encode_dataset
from tests.conftest import DEMO_DATASET


@pytest.fixture(scope="module")
def smollm2() -> Iterator[tuple[Any, list[EncodedRow]]]:
    from finetune_trainer.backend import select_backend

    select_backend()
    from finetune_trainer.modeling import load_base
    from finetune_trainer.packing import register_segment_attention

    register_segment_attention()
    spec = FineTuneJobSpec.model_validate(
        {"model": {"preset": "smollm2-135m"}, "dataset": {"uri": str(DEMO_DATASET)}}
    ).resolve()
    loaded = load_base(spec, training=False)
    loaded.model.config.use_cache = False
    numbered = data.read_numbered(DEMO_DATASET)[:3]
    rows = [row for row in encode_dataset(loaded.tokenizer, numbered, 2048, "truncate").rows]
    assert all(row is not None for row in rows)
    yield loaded.model, [row for row in rows if row is not None]


@pytest.mark.parametrize("attention", ["segment_sdpa", "sdpa", "eager"])
def test_a_packed_conversation_attends_only_to_itself(
    smollm2: tuple[Any, list[EncodedRow]], attention: str
) -> None:
    from finetune_trainer.packing import PackingCollator

    model, rows = smollm2
    model.set_attn_implementation(attention)
    try:
        packed = PackingCollator()(rows)
        labels = packed.pop("labels")
        with torch.no_grad():
            together = model(**packed).logits[0]
            alone = model(input_ids=torch.tensor([rows[1].input_ids])).logits[0]
        start = len(rows[0].input_ids)
        second = together[start : start + len(rows[1].input_ids)]
        assert labels.shape == packed["input_ids"].shape
        assert torch.allclose(second, alone, atol=1e-4), (second - alone).abs().max()
    finally:
        model.set_attn_implementation("sdpa")


def test_a_packed_batch_has_the_padded_batchs_loss(smollm2: tuple[Any, list[EncodedRow]]) -> None:
    from finetune_trainer.packing import SEGMENT_SDPA, PackingCollator

    model, rows = smollm2
    padded = PadCollator(pad_token_id=2)(rows)
    model.set_attn_implementation(SEGMENT_SDPA)
    try:
        with torch.no_grad():
            packed_loss = model(**PackingCollator()(rows)).loss
            padded_loss = model(**padded).loss
    finally:
        model.set_attn_implementation("sdpa")
    assert torch.isclose(packed_loss, padded_loss, rtol=1e-4), (packed_loss, padded_loss)


def test_the_packed_row_holds_every_token_once_with_restarting_positions() -> None:
    from finetune_trainer.packing import PackingCollator

    rows = [EncodedRow([5, 6, 7], [-100, 6, 7]), EncodedRow([8, 9], [8, 9])]
    batch = PackingCollator()(rows)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    # No loss for predicting a conversation's first token from the one before it.
    assert batch["labels"].tolist() == [[-100, 6, 7, -100, 9]]
    assert batch["cu_seq_lens_q"].tolist() == [0, 3, 5]
    assert batch["max_length_q"] == 3
