"""The benchmark stage's quality figures, report/evaluation.json: the adapter's loss,
perplexity and bits per byte on held-out chats, and answers for human review scored against
the references.

Held-out chats: `evaluation.dataset` when the spec names one (read and validated like the
training dataset, problems listed with line numbers), else the run's validation split (the
trainer's split: same rows, validationSplit and seed). Every assistant turn is scored, with
the labels the trainer uses (encoding.py: assistant contents and their end-of-turn marker).

- eval loss: the mean negative log-likelihood per scored token, in nats (token-weighted
  over the whole set, so a long conversation counts by its tokens);
- perplexity: exp(eval loss);
- bits per byte: the total NLL of the scored tokens, in nats, / ln 2 / the number of UTF-8
  bytes of the text those tokens cover (the union of their character spans in the rendered
  conversation). A per-token loss depends on how finely the tokenizer cuts text; the bytes
  of the same text do not, so bits per byte compares models with different tokenizers on
  the same file.

Review answers: a fixed sample (`evaluation.samples`, drawn with training.seed) of the
validation split's conversations, each cut before its last assistant turn, answered
greedily (up to REVIEW_MAX_NEW_TOKENS, stopping at the end of turn) by the base model (the
adapter disabled) and by the adapter. BLEU is sacrebleu's corpus BLEU (0..100, its default
13a tokenizer); ROUGE-L is rouge-score's mean F-measure (0..1, with stemming), each against
the last assistant turn as the single reference.

Import this module only after `backend.select_backend()` (it uses torch models).
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from finetune_core.api import EvaluationReport, ResolvedSpec, ReviewAnswer
from finetune_trainer import data
from finetune_trainer.encoding import IGNORE_INDEX, assistant_spans, label_tokens
from finetune_trainer.modeling import LoadedModel
from finetune_trainer.stage import invalid_input

log = logging.getLogger(__name__)

VALIDATION_SPLIT = "validation split"
REVIEW_MAX_NEW_TOKENS = 64
REVIEW_BATCH = 8  # prompts generated together (left-padded): far cheaper per answer on a CPU
LIKELIHOOD_BATCH_TOKENS = 2048  # padded tokens per forward pass of the held-out likelihood


@dataclass(frozen=True)
class ScoredRow:
    """A conversation as token ids and labels, and the UTF-8 bytes its labelled tokens cover."""

    input_ids: list[int]
    labels: list[int]
    label_bytes: int


def covered_bytes(text: str, offsets: list[tuple[int, int]], labels: list[int]) -> int:
    """UTF-8 bytes of the characters that labelled tokens cover; a character two tokens share
    (a byte-level tokenizer may split one) is counted once."""
    covered = bytearray(len(text))
    for (start, end), label in zip(offsets, labels, strict=True):
        if label != IGNORE_INDEX:
            covered[start:end] = b"\x01" * (end - start)
    return sum(len(char.encode()) for char, hit in zip(text, covered, strict=True) if hit)


def score_row(
    tokenizer: Any, conversation: data.Conversation, max_seq_length: int
) -> tuple[ScoredRow, bool]:
    """The conversation rendered with the chat template, labelled as the trainer labels it
    and cut to max_seq_length; (row, whether it was cut)."""
    text = tokenizer.apply_chat_template(conversation, tokenize=False)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoding["input_ids"])
    offsets = [tuple(pair) for pair in encoding["offset_mapping"]]
    labels = label_tokens(ids, offsets, assistant_spans(text, conversation, tokenizer.eos_token))
    cut = len(ids) > max_seq_length
    if cut:
        ids, labels, offsets = (
            ids[:max_seq_length],
            labels[:max_seq_length],
            offsets[:max_seq_length],
        )
    return ScoredRow(ids, labels, covered_bytes(text, offsets, labels)), cut


def score_rows(
    tokenizer: Any,
    numbered: list[tuple[int, data.Conversation]],
    max_seq_length: int,
    too_long: str,
    source: str,
) -> list[ScoredRow]:
    """Every conversation scored (see score_row), with the dataset's too-long policy; a
    DatasetError lists every problem with its line number."""
    rows: list[ScoredRow] = []
    problems: list[data.LineProblem] = []
    for line, conversation in numbered:
        try:
            row, cut = score_row(tokenizer, conversation, max_seq_length)
        except Exception as error:  # a template may raise anything (jinja, ValueError, ...)
            problems.append(data.LineProblem(line, f"chat template: {error}"))
            continue
        if cut and too_long == "reject":
            problems.append(
                data.LineProblem(
                    line,
                    f"longer than model.maxSeqLength {max_seq_length} tokens after the chat "
                    "template (tooLong: reject)",
                )
            )
        elif row.label_bytes:
            rows.append(row)
    if problems:
        raise data.DatasetError(problems, source)
    return rows


@dataclass(frozen=True)
class Likelihood:
    """Summed over every scored token of a set of conversations."""

    nll: float  # nats
    tokens: int
    bytes: int

    @property
    def eval_loss(self) -> float | None:
        return self.nll / self.tokens if self.tokens else None

    @property
    def perplexity(self) -> float | None:
        loss = self.eval_loss
        return None if loss is None else math.exp(min(loss, 700.0))

    @property
    def bits_per_byte(self) -> float | None:
        return self.nll / math.log(2) / self.bytes if self.bytes else None


def length_batches(rows: list[ScoredRow], max_tokens: int) -> list[list[ScoredRow]]:
    """Rows sorted by length into batches of at most `max_tokens` padded tokens (at least
    one row each): little padding, and logits of a bounded size."""
    batches: list[list[ScoredRow]] = []
    for row in sorted(rows, key=lambda r: len(r.input_ids)):
        batch = batches[-1] if batches else None
        if batch and len(row.input_ids) * (len(batch) + 1) <= max_tokens:
            batch.append(row)
        else:
            batches.append([row])
    return batches


@torch.inference_mode()
def likelihood(
    model: Any,
    rows: list[ScoredRow],
    device: str,
    pad_token_id: int = 0,
    max_tokens: int = LIKELIHOOD_BATCH_TOKENS,
) -> Likelihood:
    """The model's total NLL over the rows' labelled tokens. Rows of similar length go
    through the model together, right-padded (pads are masked and never scored): on a CPU a
    batch of eight costs about half the time of eight single passes."""
    nll, tokens, size = 0.0, 0, 0
    for batch in length_batches(rows, max_tokens):
        width = max(len(row.input_ids) for row in batch)
        ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for index, row in enumerate(batch):
            ids[index, : len(row.input_ids)] = torch.tensor(row.input_ids)
            labels[index, : len(row.labels)] = torch.tensor(row.labels)
            mask[index, : len(row.input_ids)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        targets = labels[:, 1:].to(device)
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1, :].float().reshape(-1, logits.shape[-1]),
            targets.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        nll += float(loss)
        tokens += int((targets != IGNORE_INDEX).sum())
        size += sum(row.label_bytes for row in batch)
    return Likelihood(nll, tokens, size)


# ---------------------------------------------------------------- the held-out chats


@dataclass(frozen=True)
class HeldOut:
    """The chats to evaluate, read and validated before any model is loaded."""

    label: str  # what evaluation.json's `dataset` says: the URI, or "validation split"
    field: str  # the spec field that named them, for error messages
    source: str  # the file name, for line-numbered problems
    numbered: list[tuple[int, data.Conversation]]
    too_long: str
    validation: list[tuple[int, data.Conversation]]  # where review prompts come from


def read_held_out(spec: ResolvedSpec, workdir: Path) -> HeldOut:
    """evaluation.dataset (fetched, pinned by its sha256 when given, every line validated),
    else the run's validation split; an input failure naming the field otherwise."""
    validation = validation_split(spec, workdir)
    chosen = spec.evaluation.dataset
    if chosen is None:
        too_long = spec.dataset.too_long
        return HeldOut(
            VALIDATION_SPLIT, "dataset", "validation split", validation, too_long, validation
        )
    field = "spec.evaluation.dataset"
    try:
        path = data.fetch(chosen.uri, workdir / "evaluation")
        digest = data.sha256_file(path)
        if chosen.sha256 and digest != chosen.sha256:
            raise invalid_input(
                "DatasetChanged",
                f"{field}: {chosen.uri} has sha256 {digest}, but {field}.sha256 pins "
                f"{chosen.sha256}",
            )
        numbered = data.read_numbered(path)
    except (data.DatasetError, OSError) as error:
        raise invalid_input("InvalidEvaluationDataset", f"{field}: {error}") from error
    return HeldOut(chosen.uri, field, path.name, numbered, chosen.too_long, validation)


def held_out_rows(spec: ResolvedSpec, tokenizer: Any, held_out: HeldOut) -> list[ScoredRow]:
    """The held-out chats scored with the model's chat template (see score_rows)."""
    try:
        return score_rows(
            tokenizer, held_out.numbered, spec.max_seq_length, held_out.too_long, held_out.source
        )
    except data.DatasetError as error:
        raise invalid_input("InvalidEvaluationDataset", f"{held_out.field}: {error}") from error


def validation_split(spec: ResolvedSpec, workdir: Path) -> list[tuple[int, data.Conversation]]:
    """The run's validation conversations with their dataset line numbers, split as the
    trainer splits them."""
    try:
        path = data.fetch(spec.dataset.uri, workdir / "dataset")
        numbered = data.read_numbered(path)
        _, held_out = data.split_indices(len(numbered), spec.dataset.validation_split, spec.seed)
    except (data.DatasetError, OSError) as error:
        raise invalid_input("InvalidDataset", f"dataset: {error}") from error
    return [numbered[i] for i in held_out]


# ---------------------------------------------------------------- review answers


@dataclass(frozen=True)
class ReviewPrompt:
    """A conversation cut before its last assistant turn, and that turn (the reference)."""

    messages: data.Conversation
    reference: str

    @property
    def question(self) -> str:
        """The last user turn: what the review table shows as the prompt."""
        return next(m["content"] for m in reversed(self.messages) if m["role"] == "user")


def review_prompt(conversation: data.Conversation) -> ReviewPrompt | None:
    """The conversation up to its last assistant turn, and that turn; None when no user
    turn comes before it."""
    last = max(i for i, m in enumerate(conversation) if m["role"] == "assistant")
    messages = conversation[:last]
    if not any(m["role"] == "user" for m in messages):
        return None
    return ReviewPrompt(messages, conversation[last]["content"])


def review_sample(
    validation: list[tuple[int, data.Conversation]], samples: int, seed: int
) -> list[ReviewPrompt]:
    """`samples` review prompts drawn with the seed (the same ones for the same split and
    seed, in split order); conversations with no user turn before their answer are skipped."""
    usable = [p for _, conversation in validation if (p := review_prompt(conversation))]
    chosen = sorted(random.Random(seed).sample(range(len(usable)), min(samples, len(usable))))
    return [usable[i] for i in chosen]


@contextlib.contextmanager
def left_padding(tokenizer: Any) -> Iterator[None]:
    """Batched generation pads on the left, so every prompt ends where generation starts."""
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        yield
    finally:
        tokenizer.padding_side = side


@torch.inference_mode()
def answer(
    model: Any, tokenizer: Any, device: str, prompts: list[ReviewPrompt], max_new_tokens: int
) -> list[str]:
    """Greedy answers, generated REVIEW_BATCH prompts at a time, ending at the end of turn."""
    answers: list[str] = []
    for first in range(0, len(prompts), REVIEW_BATCH):
        batch = prompts[first : first + REVIEW_BATCH]
        texts = [
            tokenizer.apply_chat_template(p.messages, tokenize=False, add_generation_prompt=True)
            for p in batch
        ]
        with left_padding(tokenizer):
            encoded = tokenizer(
                texts, return_tensors="pt", padding=True, add_special_tokens=False
            ).to(device)
        output = model.generate(
            **encoded,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=tokenizer.pad_token_id,
        )
        new = output[:, encoded["input_ids"].shape[-1] :]
        answers += [text.strip() for text in tokenizer.batch_decode(new, skip_special_tokens=True)]
    return answers


def review_token_budget(tokenizer: Any, prompts: list[ReviewPrompt]) -> int:
    """New tokens per answer: room for the longest reference and a half, at most
    REVIEW_MAX_NEW_TOKENS (the answers are for reading, and each token costs CPU time)."""
    longest = max(
        len(tokenizer(p.reference, add_special_tokens=False)["input_ids"]) for p in prompts
    )
    return max(8, min(REVIEW_MAX_NEW_TOKENS, math.ceil(longest * 1.5)))


def base_model(model: Any) -> contextlib.AbstractContextManager[Any]:
    """The model with its adapter disabled (peft's disable_adapter), for the base answers."""
    disable = getattr(model, "disable_adapter", None)
    if disable is None:
        raise RuntimeError("the model carries no adapter to disable (merged before evaluation?)")
    return disable()


def bleu(answers: list[str], references: list[str]) -> float:
    import sacrebleu

    return float(sacrebleu.corpus_bleu(answers, [references]).score)


def rouge_l(answers: list[str], references: list[str]) -> float:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [
        scorer.score(ref, ans)["rougeL"].fmeasure
        for ans, ref in zip(answers, references, strict=True)
    ]
    return sum(scores) / len(scores)


# ---------------------------------------------------------------- the recipe


def evaluate(spec: ResolvedSpec, loaded: LoadedModel, held_out: HeldOut) -> EvaluationReport:
    """report/evaluation.json's content for the adapter in `loaded` (not merged: the base
    answers need the adapter disabled)."""
    dataset = held_out.label
    rows = held_out_rows(spec, loaded.tokenizer, held_out)
    pad = loaded.tokenizer.pad_token_id or 0
    measured = likelihood(loaded.model, rows, loaded.device, pad)
    log.info(
        "evaluated on %s: %d conversations, %d tokens, %d bytes; eval loss %s, %s bits/byte",
        dataset,
        len(rows),
        measured.tokens,
        measured.bytes,
        _fmt(measured.eval_loss),
        _fmt(measured.bits_per_byte),
    )
    report = EvaluationReport(
        dataset=dataset,
        eval_loss=measured.eval_loss,
        perplexity=measured.perplexity,
        bits_per_byte=measured.bits_per_byte,
    )
    if spec.evaluation.samples == 0:
        return report
    prompts = review_sample(held_out.validation, spec.evaluation.samples, spec.seed)
    if not prompts:
        return report
    budget = review_token_budget(loaded.tokenizer, prompts)
    model, tokenizer, device = loaded.model, loaded.tokenizer, loaded.device
    with base_model(model):
        base = answer(model, tokenizer, device, prompts, budget)
    adapted = answer(model, tokenizer, device, prompts, budget)
    references = [p.reference for p in prompts]
    report.base_bleu, report.adapter_bleu = bleu(base, references), bleu(adapted, references)
    report.base_rouge_l = rouge_l(base, references)
    report.adapter_rouge_l = rouge_l(adapted, references)
    report.answers = [
        ReviewAnswer(prompt=p.question, reference=p.reference, base=b, adapter=a)
        for p, b, a in zip(prompts, base, adapted, strict=True)
    ]
    log.info(
        "review answers (%d, up to %d new tokens): BLEU base %.2f adapter %.2f; ROUGE-L base "
        "%.3f adapter %.3f",
        len(prompts),
        budget,
        report.base_bleu,
        report.adapter_bleu,
        report.base_rouge_l,
        report.adapter_rouge_l,
    )
    return report


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
