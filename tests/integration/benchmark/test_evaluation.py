"""`finetune benchmark` on a real trained adapter (smollm2-135m on the CPU): the held-out
evaluation and the review answers in report/evaluation.json and the report, and the merged
model for serving, which transformers alone loads and which answers as base + adapter do."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from finetune_core.api import EvaluationReport
from finetune_core.layout import ErrorReport, RunPaths
from finetune_core.presets import SMOLLM2_MODEL_ID
from finetune_core.store import LocalStore
from tests.integration.benchmark.conftest import TOPICS, TrainedRun, finetune, run_spec
from tests.unit.benchmark.pages import assert_self_contained

pytestmark = pytest.mark.slow

RUN = RunPaths("ml", "reviewed", 1)
SLA = [{"name": "answer", "maxNewTokens": 2, "maxLatencySeconds": 600}]
HELD_OUT = [
    ("What is a virtual environment?", "An isolated set of installed packages per project."),
    ("Why pin dependencies?", "So every install gets the versions you tested — reproducible."),
    ("What does pytest do?", "It finds and runs your tests and reports what failed."),
]
PROMPTS = ["What is pip?", "Explain Python lists in one sentence.", "Name a web framework."]
NEW_TOKENS = 12

# Loads the merged model with transformers alone (peft cannot even be imported) and prints
# the greedy continuation of each prompt as token ids.
LOAD_MERGED = """
import json, sys
sys.modules["peft"] = None
from transformers import AutoModelForCausalLM, AutoTokenizer
directory, prompts, new_tokens = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
tokenizer = AutoTokenizer.from_pretrained(directory)
model = AutoModelForCausalLM.from_pretrained(directory).eval()
out = []
for prompt in prompts:
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt",
        return_dict=True,
    )
    generated = model.generate(**ids, max_new_tokens=new_tokens, do_sample=False,
                               pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    out.append(generated[0, ids["input_ids"].shape[-1]:].tolist())
print(json.dumps(out))
"""


def chats(pairs: list[tuple[str, str]]) -> str:
    return "".join(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": answer},
                ]
            }
        )
        + "\n"
        for question, answer in pairs
    )


def with_visible_adapter(store: LocalStore, run: RunPaths) -> Path:
    """Give the run's adapter random lora_B weights (seeded): one optimiser step after
    warm-up leaves B at zero, and an adapter that changes nothing would make "the merged
    model answers as base + adapter" true of any merge. Returns the adapter's directory."""
    import torch
    from safetensors.torch import load_file, save_file

    adapter = store.root / run.adapter
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    generator = torch.Generator().manual_seed(7)
    for key, tensor in weights.items():
        if "lora_B" in key:
            weights[key] = torch.randn(tensor.shape, generator=generator) * 0.05
    save_file(weights, str(adapter / "adapter_model.safetensors"), metadata={"format": "pt"})
    return adapter


def base_plus_adapter_answers(adapter: Path) -> list[list[int]]:
    """The greedy continuations of PROMPTS by the base model with the adapter (peft)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune_trainer.modeling import local_model_path

    base = AutoModelForCausalLM.from_pretrained(
        local_model_path(SMOLLM2_MODEL_ID), dtype=torch.float32
    )
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(adapter))
    answers = []
    with torch.inference_mode():
        for prompt in PROMPTS:
            ids = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}],
                add_generation_prompt=True,
                return_tensors="pt",
                return_dict=True,
            )
            generated = model.generate(
                **ids,
                max_new_tokens=NEW_TOKENS,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
            )
            answers.append(generated[0, ids["input_ids"].shape[-1] :].tolist())
    return answers


@dataclass(frozen=True)
class Benchmarked:
    store: LocalStore
    adapter: Path
    held_out: Path
    stdout: str


@pytest.fixture(scope="module")
def benchmarked(trained: TrainedRun, tmp_path_factory: pytest.TempPathFactory) -> Benchmarked:
    """One `finetune benchmark` with a held-out file, two review answers and the merged
    export, on a copy of the trained run with a visible adapter."""
    directory = tmp_path_factory.mktemp("reviewed")
    store = LocalStore(directory / "store")
    held_out = directory / "held-out.jsonl"
    held_out.write_text(chats(HELD_OUT))
    spec: dict[str, Any] = {
        **run_spec(str(trained.dataset), SLA, samples=1, warmup=0),
        "evaluation": {"dataset": {"uri": str(held_out)}, "samples": 2},
        "promotion": {"export": ["adapter", "merged"]},
    }
    uri = trained.copy_to(store, RUN, spec)
    adapter = with_visible_adapter(store, RUN)
    result = finetune("benchmark", "--run", uri)
    assert result.returncode == 0, result.stderr[-3000:]
    return Benchmarked(store, adapter, held_out, result.stdout)


def test_the_held_out_file_is_evaluated(benchmarked: Benchmarked) -> None:
    evaluation = EvaluationReport.model_validate(benchmarked.store.get_json(RUN.evaluation))
    assert evaluation.dataset == str(benchmarked.held_out)
    assert evaluation.eval_loss is not None and evaluation.eval_loss > 0
    assert evaluation.perplexity == pytest.approx(math.exp(evaluation.eval_loss))
    # bits per byte sits well below the loss per token in bits: tokens are several bytes long
    assert evaluation.bits_per_byte is not None
    assert 0 < evaluation.bits_per_byte < evaluation.eval_loss / math.log(2)


def test_review_answers_come_from_the_validation_split_with_their_scores(
    benchmarked: Benchmarked,
) -> None:
    evaluation = EvaluationReport.model_validate(benchmarked.store.get_json(RUN.evaluation))
    # Two review answers, from the validation split of the training data (not the held-out
    # file), each against the dataset's own answer.
    questions = {f"What are Python {topic} good for?": topic for topic in TOPICS}
    assert len(evaluation.answers) == 2
    for review in evaluation.answers:
        topic = questions[review.prompt]
        assert review.reference.startswith(f"Python {topic} make code clearer")
        assert review.base and review.adapter
    # The visible adapter changes what the model says.
    assert [a.base for a in evaluation.answers] != [a.adapter for a in evaluation.answers]
    for score in (evaluation.base_bleu, evaluation.adapter_bleu):
        assert score is not None and 0 <= score <= 100
    for score in (evaluation.base_rouge_l, evaluation.adapter_rouge_l):
        assert score is not None and 0 <= score <= 1

    page = benchmarked.store.get_bytes(RUN.report_html).decode()
    assert_self_contained(page)
    review_table = page.split('<table class="review">', 1)[1].split("</table>", 1)[0]
    assert review_table.count("<tr>") == 3
    assert str(benchmarked.held_out) in page


def test_the_merged_model_loads_with_transformers_alone_and_answers_as_base_plus_adapter(
    benchmarked: Benchmarked,
) -> None:
    merged = benchmarked.store.root / RUN.merged
    assert (merged / "config.json").is_file()
    assert list(merged.glob("*.safetensors"))
    assert not list(merged.glob("*.bin"))
    assert (merged / "tokenizer_config.json").is_file()
    assert json.loads((merged / "config.json").read_text())["model_type"] == "llama"

    loaded = subprocess.run(
        [sys.executable, "-c", LOAD_MERGED, str(merged), json.dumps(PROMPTS), str(NEW_TOKENS)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    merged_answers = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert merged_answers == base_plus_adapter_answers(benchmarked.adapter)
    assert all(len(tokens) > 0 for tokens in merged_answers)


def test_the_merged_weights_carry_the_adapter(benchmarked: Benchmarked) -> None:
    """Merging changed the weights the adapter targets, and only those."""
    from safetensors import safe_open

    from finetune_trainer.modeling import local_model_path

    def tensors(directory: Path, name: str) -> Any:
        for file in directory.glob("*.safetensors"):
            with safe_open(str(file), "pt") as opened:
                if name in opened.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                    return opened.get_tensor(name)
        raise AssertionError(f"{name} is in no safetensors file of {directory}")

    base = Path(local_model_path(SMOLLM2_MODEL_ID))
    merged = benchmarked.store.root / RUN.merged
    q_proj = "model.layers.0.self_attn.q_proj.weight"
    assert float((tensors(merged, q_proj) - tensors(base, q_proj)).abs().max()) > 1e-4
    norm = "model.layers.0.input_layernorm.weight"
    assert bool((tensors(merged, norm) == tensors(base, norm)).all())


def test_an_invalid_held_out_dataset_fails_naming_the_field_and_the_line(
    trained: TrainedRun, local_store: LocalStore, tmp_path: Path
) -> None:
    held_out = tmp_path / "held-out.jsonl"
    held_out.write_text(chats(HELD_OUT[:1]) + '{"messages": []}\n')
    spec = {
        **run_spec(str(trained.dataset), SLA),
        "evaluation": {"dataset": {"uri": str(held_out)}},
    }
    uri = trained.copy_to(local_store, RUN, spec)

    result = finetune("benchmark", "--run", uri)
    assert result.returncode == 3, result.stderr[-3000:]
    error = ErrorReport.model_validate(local_store.get_json(RUN.error))
    assert (error.stage, error.reason) == ("benchmark", "InvalidEvaluationDataset")
    assert error.message.startswith("spec.evaluation.dataset: held-out.jsonl: 1 problem")
    assert 'line 2: "messages" is empty' in error.message
    assert not local_store.exists(RUN.evaluation)
    assert not local_store.exists(RUN.benchmark_report)
