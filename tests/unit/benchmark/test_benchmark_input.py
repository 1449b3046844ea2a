"""The benchmark's parts that need no model: the token clock, prompts, and the input errors
that end it with exit 3 and error.json before any model is loaded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from finetune_core.api import RunConfig
from finetune_core.layout import RunPaths
from finetune_core.store import LocalStore
from finetune_trainer.benchmark import main
from finetune_trainer.prompts import up_to_last_user_turn
from finetune_trainer.timing import TokenClock, generation_options
from tests.unit.benchmark.builders import make_spec

RUN = RunPaths("ml", "agent", 1)


def conversation(*turns: tuple[str, str]) -> dict[str, Any]:
    return {"messages": [{"role": role, "content": content} for role, content in turns]}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_the_clock_ignores_the_prompt_and_times_each_new_token() -> None:
    clock = TokenClock()
    clock.put(torch.tensor([[1, 2, 3, 4, 5]]))  # generate() puts the prompt first
    clock.put(torch.tensor([7]))
    clock.put(torch.tensor([8]))
    clock.end()
    assert len(clock.times) == 2
    assert clock.times[0] <= clock.times[1]


def test_generation_is_greedy_and_exactly_max_new_tokens() -> None:
    class Tokenizer:
        pad_token_id = 0

    options = generation_options(Tokenizer(), 50)
    assert options["max_new_tokens"] == options["min_new_tokens"] == 50
    assert options["do_sample"] is False


def test_a_prompt_is_the_conversation_up_to_its_last_user_turn() -> None:
    messages = conversation(
        ("system", "be brief"),
        ("user", "a?"),
        ("assistant", "A."),
        ("user", "b?"),
        ("assistant", "B."),
    )["messages"]
    assert up_to_last_user_turn(messages) == messages[:4]
    assert up_to_last_user_turn(messages[:1]) is None


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def configure(store: LocalStore, tmp_path: Path, prompts: str | None = None) -> str:
    """A run whose dataset is valid; the answer profile optionally has its own prompts."""
    dataset = write_jsonl(
        tmp_path / "data.jsonl",
        [conversation(("user", f"q{i}?"), ("assistant", f"a{i}.")) for i in range(10)],
    )
    sla = [{"name": "answer", "maxNewTokens": 4, "maxLatencySeconds": 6, "prompts": prompts}]
    spec = make_spec(sla=[{k: v for k, v in p.items() if v is not None} for p in sla])
    spec.dataset.uri = str(dataset)
    config = RunConfig(namespace="ml", name="agent", generation=1, spec=spec)
    store.put_json(RUN.config, config.to_wire())
    return store.uri(RUN.prefix)


def error_of(store: LocalStore) -> dict[str, Any]:
    error: dict[str, Any] = store.get_json(RUN.error)
    return error


def test_an_unreadable_prompts_file_is_invalid_input(store: LocalStore, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"messages": [{"role": "user", "content": "hi"}]}\nnot json\n')
    assert main(configure(store, tmp_path, str(prompts))) == 3
    error = error_of(store)
    assert (error["stage"], error["reason"]) == ("benchmark", "InvalidPrompts")
    assert "profile answer" in error["message"] and "line 2: invalid JSON" in error["message"]
    assert not store.exists(RUN.benchmark_report)


def test_a_missing_prompts_file_is_invalid_input(store: LocalStore, tmp_path: Path) -> None:
    assert main(configure(store, tmp_path, str(tmp_path / "absent.jsonl"))) == 3
    assert error_of(store)["reason"] == "InvalidPrompts"
    assert "no such file" in error_of(store)["message"]


def test_a_prompt_without_a_user_turn_names_its_line(store: LocalStore, tmp_path: Path) -> None:
    prompts = write_jsonl(
        tmp_path / "prompts.jsonl",
        [conversation(("user", "hi")), conversation(("system", "only a system prompt"))],
    )
    assert main(configure(store, tmp_path, str(prompts))) == 3
    assert error_of(store)["message"].endswith(
        f"prompts {prompts} line 2: no user message to prompt with"
    )


def test_prompts_files_need_no_answers_but_a_run_needs_an_adapter(
    store: LocalStore, tmp_path: Path
) -> None:
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [conversation(("user", "hi"))])
    assert main(configure(store, tmp_path, str(prompts))) == 3
    error = error_of(store)
    assert error["reason"] == "AdapterMissing"
    assert store.uri(RUN.adapter) in error["message"]


def test_an_invalid_config_is_invalid_input(store: LocalStore) -> None:
    store.put_json(RUN.config, {"namespace": "ml"})
    assert main(store.uri(RUN.prefix)) == 3
    assert error_of(store)["reason"] == "InvalidConfig"
    assert "spec" in error_of(store)["message"]


def test_a_uri_that_is_not_a_run_is_invalid_input(tmp_path: Path) -> None:
    assert main(str(tmp_path / "not-a-run")) == 3
