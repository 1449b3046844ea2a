"""Padding-free batches: a batch's conversations packed end to end into one row.

A padded batch computes every row to the longest one's length; on the demo dataset (batch
of 4) a fifth of the tokens computed are padding. A packed row holds exactly the batch's
tokens, and `position_ids` restart at 0 where each conversation starts, so the rotary
positions are those each conversation has alone.

No conversation may attend to another. The row carries no attention_mask, and the model
runs with use_cache off: transformers then reads the conversation boundaries from the
position_ids and builds a block-diagonal causal mask (sdpa, eager), so any attention
implementation is correct. That mask is dense, though: attention would cost the packed
row's length squared, most of it masked out. `SEGMENT_SDPA` (registered by
`register_segment_attention`) instead runs sdpa's causal kernel on each conversation's
slice, using the boundaries the collator passes as `cu_seq_lens_q`/`cu_seq_lens_k` (the
keywords transformers passes through to the attention function, as for flash attention's
varlen kernel); the cost is then that of the conversations run one by one.

The labels are the conversations' own, with the first token of each conversation ignored
(no loss for predicting a conversation's first token from the previous one's last): the
loss, a mean over the batch's trained tokens, is the padded batch's.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch

from finetune_trainer.encoding import IGNORE_INDEX, EncodedRow

SEGMENT_SDPA = "segment_sdpa"


class PackingCollator:
    """A batch of rows as one packed row, with position_ids and conversation boundaries."""

    def __call__(self, rows: list[EncodedRow]) -> dict[str, Any]:
        input_ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        boundaries = [0]
        for row in rows:
            length = len(row.input_ids)
            input_ids += row.input_ids
            labels += [IGNORE_INDEX, *row.labels[1:]]
            positions += range(length)
            boundaries.append(boundaries[-1] + length)
        longest = max(len(row.input_ids) for row in rows)
        cu_seq_lens = torch.tensor(boundaries, dtype=torch.int32)
        return {
            "input_ids": torch.tensor([input_ids], dtype=torch.long),
            "labels": torch.tensor([labels], dtype=torch.long),
            "position_ids": torch.tensor([positions], dtype=torch.long),
            "cu_seq_lens_q": cu_seq_lens,
            "cu_seq_lens_k": cu_seq_lens,
            "max_length_q": longest,
            "max_length_k": longest,
        }


def segment_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """sdpa per conversation of a packed row (causal within each, nothing across); plain
    sdpa (with the mask transformers built) for a batch without boundaries."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    boundaries = kwargs.pop("cu_seq_lens_q", None)
    kwargs.pop("cu_seq_lens_k", None)
    if boundaries is None or query.shape[0] != 1 or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    outputs = []
    edges = [int(edge) for edge in boundaries.tolist()]
    for start, end in itertools.pairwise(edges):
        segment, _ = sdpa_attention_forward(
            module,
            query[:, :, start:end],
            key[:, :, start:end],
            value[:, :, start:end],
            None,
            is_causal=True,
            **kwargs,
        )
        outputs.append(segment)
    return torch.cat(outputs, dim=1), None  # sdpa_attention_forward returns (b, q, h, d)


def register_segment_attention() -> str:
    """Register SEGMENT_SDPA with transformers (attention and mask); returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(SEGMENT_SDPA, segment_sdpa_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(SEGMENT_SDPA, sdpa_mask)
    return SEGMENT_SDPA
