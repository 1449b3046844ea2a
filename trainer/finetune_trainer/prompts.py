"""What the benchmark prompts with: each SLA profile's prompts file, else the user turns of
the validation split (the trainer's split: same rows, validationSplit and seed), chat-
templated and tokenized before any clock starts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from finetune_core.api import ResolvedSpec, SlaProfile
from finetune_trainer import data
from finetune_trainer.report import slug
from finetune_trainer.stage import invalid_input


@dataclass(frozen=True)
class Prompt:
    """A conversation cut after its last user turn, and where it came from."""

    source: str
    messages: data.Conversation


def up_to_last_user_turn(conversation: data.Conversation) -> data.Conversation | None:
    """The conversation up to and including its last user message; None without one."""
    users = [i for i, message in enumerate(conversation) if message["role"] == "user"]
    return conversation[: users[-1] + 1] if users else None


def as_prompts(rows: list[tuple[str, data.Conversation]]) -> list[Prompt]:
    """Prompts from (where, conversation) rows; a row without a user turn is an input error."""
    prompts = []
    for source, row in rows:
        messages = up_to_last_user_turn(row)
        if messages is None:
            raise invalid_input("InvalidPrompts", f"{source}: no user message to prompt with")
        prompts.append(Prompt(source, messages))
    return prompts


def profile_prompts(profile: SlaProfile, uri: str, workdir: Path) -> list[Prompt]:
    """A profile's own prompts file (no assistant turn needed)."""
    where = f"profile {profile.name}: prompts {uri}"
    try:
        path = data.fetch(uri, workdir / "prompts" / slug(profile.name))
        numbered = data.read_numbered(path, require_assistant=False)
    except (data.DatasetError, OSError) as error:
        raise invalid_input("InvalidPrompts", f"{where}: {error}") from error
    return as_prompts([(f"{where} line {n}", row) for n, row in numbered])


def validation_prompts(spec: ResolvedSpec, workdir: Path) -> list[Prompt]:
    """The user turns of the validation split, split as the trainer splits."""
    try:
        path = data.fetch(spec.dataset.uri, workdir / "dataset")
        numbered = data.read_numbered(path)
        _, held_out = data.split_indices(len(numbered), spec.dataset.validation_split, spec.seed)
    except (data.DatasetError, OSError) as error:
        raise invalid_input("InvalidDataset", f"dataset: {error}") from error
    return as_prompts(
        [(f"validation row (dataset line {numbered[i][0]})", numbered[i][1]) for i in held_out]
    )


def load_prompts(spec: ResolvedSpec, workdir: Path) -> dict[str, list[Prompt]]:
    """Each profile's prompts: its own prompts file, else the validation split's."""
    prompts: dict[str, list[Prompt]] = {}
    validation: list[Prompt] | None = None
    for profile in spec.benchmark.sla:
        if profile.prompts:
            prompts[profile.name] = profile_prompts(profile, profile.prompts, workdir)
            continue
        if validation is None:
            validation = validation_prompts(spec, workdir)
        prompts[profile.name] = validation
    return prompts


def encode_prompts(
    model: Any, tokenizer: Any, device: str, prompts: list[Prompt], profile: SlaProfile
) -> list[dict[str, torch.Tensor]]:
    """Chat-template and tokenize the prompts onto the model's device; a prompt that leaves
    no room for maxNewTokens in the model's context is an input error."""
    context = getattr(model.config, "max_position_embeddings", None)
    encoded = []
    for prompt in prompts:
        batch = tokenizer.apply_chat_template(
            prompt.messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        tensors = {key: batch[key].to(device) for key in ("input_ids", "attention_mask")}
        length = tensors["input_ids"].shape[-1]
        if context is not None and length + profile.max_new_tokens > context:
            raise invalid_input(
                "PromptTooLong",
                f"profile {profile.name}: {prompt.source} has {length} tokens; with maxNewTokens "
                f"{profile.max_new_tokens} it exceeds the model's context of {context} tokens",
            )
        encoded.append(tensors)
    return encoded
