"""Promotion with promotion.export: merged and the review-score thresholds, on both stores:
objects are copied (the operator loads no model), and the model card says how to serve."""

from __future__ import annotations

from typing import Any

import pytest

from finetune_core.api import EvaluationReport, FineTuneJobSpec, ResolvedSpec, ReviewAnswer
from finetune_core.layout import AliasPaths, RunPaths
from finetune_core.promotion import (
    ChampionChanged,
    PromotionError,
    promote,
    read_champion,
    vllm_lora_rank,
)
from finetune_core.store import ArtifactStore
from tests.integration.benchmark.test_promotion import finished_run

RUN = RunPaths("ml", "agent", 3)
ALIAS = AliasPaths("ml", "smollm2-135m")
TARGET = ALIAS.version_dir("agent-g3")


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest) -> ArtifactStore:
    return request.getfixturevalue(f"{request.param}_store")


def spec(**promotion: Any) -> ResolvedSpec:
    return FineTuneJobSpec.model_validate(
        {
            "model": {"preset": "smollm2-135m"},
            "dataset": {"uri": "s3://datasets/devassist.jsonl"},
            "benchmark": {
                "sla": [
                    {"name": "question", "maxNewTokens": 200, "maxLatencySeconds": 10},
                    {"name": "answer", "maxNewTokens": 50, "maxLatencySeconds": 6},
                ]
            },
            "promotion": promotion,
        }
    ).resolve()


def merged_model(store: ArtifactStore, run: RunPaths) -> None:
    store.put_json(f"{run.merged}/config.json", {"model_type": "llama"})
    store.put_bytes(f"{run.merged}/model.safetensors", b"merged weights")
    store.put_json(f"{run.merged}/tokenizer_config.json", {})


def evaluation(store: ArtifactStore, run: RunPaths, bleu: float, rouge_l: float) -> None:
    answer = ReviewAnswer(prompt="What is pip?", reference="The installer.", base="?", adapter="!")
    report = EvaluationReport(
        dataset="validation split",
        eval_loss=1.1,
        perplexity=3.0,
        bits_per_byte=0.75,
        base_bleu=2.0,
        adapter_bleu=bleu,
        base_rouge_l=0.1,
        adapter_rouge_l=rouge_l,
        answers=[answer],
    )
    store.put_json(run.evaluation, report.to_wire())


def test_the_merged_model_is_copied_beside_the_adapter_with_serving_commands(
    store: ArtifactStore,
) -> None:
    finished_run(store, RUN, eval_loss=1.2)
    merged_model(store, RUN)
    evaluation(store, RUN, bleu=12.5, rouge_l=0.4)
    uri = promote(store, RUN, spec(export=["adapter", "merged"]))

    keys = set(store.list(TARGET))
    assert {
        f"{TARGET}/adapter/adapter_model.safetensors",
        f"{TARGET}/merged/config.json",
        f"{TARGET}/merged/model.safetensors",
        f"{TARGET}/merged/tokenizer_config.json",
        f"{TARGET}/report/evaluation.json",
    } <= keys
    assert store.get_bytes(f"{TARGET}/merged/model.safetensors") == b"merged weights"
    card = store.get_bytes(f"{TARGET}/README.md").decode()
    model_id = spec().model_id
    assert f"aws s3 cp --recursive {uri}/ ./agent-g3/" in card
    assert f"vllm serve {model_id} --enable-lora --max-lora-rank 16" in card
    assert "--lora-modules agent-g3=./agent-g3/adapter" in card
    assert f"--model-id {model_id} --lora-adapters agent-g3=/data/adapter" in card
    assert "vllm serve ./agent-g3/merged --served-model-name agent-g3" in card
    assert "text-generation-inference:latest --model-id /data/merged" in card
    assert "| Adapter | 12.50 | 0.400 |" in card and "0.75 bits per byte" in card
    assert read_champion(store, ALIAS).version == "agent-g3"  # type: ignore[union-attr]


def test_without_merged_in_export_only_the_adapter_is_published(store: ArtifactStore) -> None:
    finished_run(store, RUN, eval_loss=1.2)
    merged_model(store, RUN)  # written, but not asked for
    promote(store, RUN, spec())
    assert not [key for key in store.list(TARGET) if "/merged/" in key]
    card = store.get_bytes(f"{TARGET}/README.md").decode()
    assert "--lora-modules agent-g3=./agent-g3/adapter" in card
    assert "/merged" not in card


def test_a_missing_merged_model_fails_promotion_naming_the_setting(store: ArtifactStore) -> None:
    finished_run(store, RUN, eval_loss=1.2)
    with pytest.raises(PromotionError, match=r"promotion\.export asks for merged"):
        promote(store, RUN, spec(export=["adapter", "merged"]))
    assert read_champion(store, ALIAS) is None


def test_promotion_gates_again_with_the_review_scores(store: ArtifactStore) -> None:
    finished_run(store, RUN, eval_loss=1.2)
    evaluation(store, RUN, bleu=3.0, rouge_l=0.4)
    with pytest.raises(ChampionChanged) as rejected:
        promote(store, RUN, spec(minBleu=10))
    assert rejected.value.verdict.reason == "ReviewScoresLow"
    assert read_champion(store, ALIAS) is None
    assert promote(store, RUN, spec(minBleu=3, minRougeL=0.4))


@pytest.mark.parametrize(("r", "rank"), [(1, 8), (8, 8), (16, 16), (24, 32), (500, 512)])
def test_the_vllm_rank_is_one_vllm_accepts(r: int, rank: int) -> None:
    assert vllm_lora_rank(r) == rank
