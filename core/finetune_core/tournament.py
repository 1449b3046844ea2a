"""The FineTuneTournament API, finetune.dev/v1alpha1: several candidate FineTuneJobs, one winner.

A tournament's spec holds a `template` (FineTuneJob spec fields every candidate shares) and
`candidates`, each a name plus any FineTuneJob spec fields, deep-merged over the template:
mappings merge key by key, lists replace lists, except `benchmark.sla`, whose profiles merge
by name (a candidate may loosen one limit without restating the others). Each candidate runs
as a child FineTuneJob `<tournament>-<candidate>` with `promotion.policy: none`; the
tournament ranks those that passed and promotes the winner (finetune_core.tournament_lifecycle).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from finetune_core.api import (
    API_VERSION,
    DNS_LABEL,
    MAX_NAME_LENGTH,
    ApiModel,
    Condition,
    DatasetSpec,
    FineTuneJobSpec,
    StatusModel,
)
from finetune_core.manifest import (
    InvalidManifest,
    Problem,
    check_metadata,
    problems_from,
)
from finetune_core.syntax import DNS_LABEL_PATTERN

TOURNAMENT_KIND = "FineTuneTournament"
TOURNAMENT_PLURAL = "finetunetournaments"
TOURNAMENT_SINGULAR = "finetunetournament"
TOURNAMENT_SHORT_NAMES = ["ftt"]
MIN_CANDIDATES = 2
MAX_CANDIDATES = 16
MAX_PARALLEL = 16
SLA_PATH = ("benchmark", "sla")
# Fields a tournament sets on every child itself: a candidate or the template may not.
RESERVED = {
    "promotion": "the tournament promotes its winner: set spec.promotion of the tournament",
}

Metric = Literal["bitsPerByte", "evalLoss", "latency"]


class Candidate(ApiModel):
    """One contestant: a name plus FineTuneJob spec fields merged over the template."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="allow", allow_inf_nan=False
    )

    name: str = Field(
        description="The candidate's name, a DNS label; its FineTuneJob is <tournament>-<name>.",
        json_schema_extra={"pattern": DNS_LABEL_PATTERN, "maxLength": 40},
    )

    @field_validator("name")
    @classmethod
    def _dns_label(cls, value: str) -> str:
        if not DNS_LABEL.fullmatch(value):
            raise ValueError(
                "must be lower-case letters, digits and '-', starting and ending with a "
                "letter or digit (it names a FineTuneJob)"
            )
        return value

    def overrides(self) -> dict[str, Any]:
        """The FineTuneJob spec fields this candidate sets, as written (camelCase)."""
        return copy.deepcopy(dict(self.model_extra or {}))


class SelectionSpec(ApiModel):
    """How the candidates that passed their SLA are ranked."""

    metric: Metric = Field(
        default="bitsPerByte",
        description="bitsPerByte (default: comparable across tokenizers), evalLoss (only when "
        "every candidate has the same tokenizer) or latency (the gated percentile of the "
        "first SLA profile). Lower is better; ties go to the lower gated latency.",
    )
    dataset: DatasetSpec | None = Field(
        default=None,
        description="Held-out chats every candidate is evaluated on (its "
        "spec.evaluation.dataset); required when the candidates train on different datasets.",
    )


class TournamentPromotionSpec(ApiModel):
    """What happens to the winner."""

    policy: Literal["auto", "manual"] = Field(
        default="auto",
        description='auto promotes the winner; manual waits for finetune.dev/approve: "<gen>" '
        "naming the tournament's generation it approves.",
    )
    alias: str | None = Field(
        default=None,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="The alias the winner is promoted to (models/<namespace>/<alias>/); "
        "default: the tournament's name.",
    )
    require_improvement: bool = Field(
        default=False,
        strict=True,
        description="A candidate must also beat its base model's eval loss and the alias's "
        "current version to rank.",
    )


class FineTuneTournamentSpec(ApiModel):
    """Desired state: train these candidates, promote the best that meets the SLA."""

    template: dict[str, Any] = Field(
        default_factory=dict,
        description="FineTuneJob spec fields shared by every candidate.",
    )
    candidates: list[Candidate] = Field(
        json_schema_extra={"minItems": MIN_CANDIDATES, "maxItems": MAX_CANDIDATES},
        description=f"{MIN_CANDIDATES}..{MAX_CANDIDATES} candidates, each a name plus "
        "FineTuneJob spec fields deep-merged over the template (lists replace lists, except "
        "benchmark.sla, which merges by profile name).",
    )
    selection: SelectionSpec = Field(
        default_factory=SelectionSpec, description="How the winner is chosen."
    )
    max_parallel: int = Field(
        default=1,
        strict=True,
        ge=1,
        le=MAX_PARALLEL,
        description=f"Candidates past Validating at once (the GPU budget), 1..{MAX_PARALLEL}.",
    )
    promotion: TournamentPromotionSpec = Field(
        default_factory=TournamentPromotionSpec, description="Promotion of the winner."
    )

    @field_validator("candidates")
    @classmethod
    def _how_many(cls, value: list[Candidate]) -> list[Candidate]:
        if not MIN_CANDIDATES <= len(value) <= MAX_CANDIDATES:
            raise ValueError(
                f"{len(value)} candidates: a tournament needs {MIN_CANDIDATES} to {MAX_CANDIDATES}"
            )
        return value


# ------------------------------------------------------------------ status

TournamentPhase = Literal[
    "Running", "Selecting", "AwaitingApproval", "Promoted", "NoWinner", "Failed"
]
TOURNAMENT_SETTLED: frozenset[str] = frozenset({"Promoted", "NoWinner", "Failed"})
"""The generation ended: only a spec change starts another."""


class ProfileLatency(StatusModel):
    """A candidate's gated latency percentile on one SLA profile."""

    name: str = Field(description="Profile name.")
    seconds: float | None = Field(default=None, description="The gated percentile (seconds).")
    limit: float | None = Field(default=None, description="The profile's limit (seconds).")
    passed: bool | None = Field(default=None, description="The profile's verdict.")


class LeaderboardEntry(StatusModel):
    """One candidate in the leaderboard."""

    name: str = Field(description="Candidate name.")
    job: str | None = Field(default=None, description="Its FineTuneJob.")
    phase: str | None = Field(
        default=None, description="Its FineTuneJob's phase (Waiting before it starts)."
    )
    message: str | None = Field(default=None, description="Why it ended there.")
    eval_loss: float | None = Field(default=None, description="Eval loss on the held-out set.")
    bits_per_byte: float | None = Field(default=None, description="Bits per byte, held out.")
    perplexity: float | None = Field(default=None, description="exp(evalLoss).")
    latency: list[ProfileLatency] = Field(
        default_factory=list, description="Gated latency per SLA profile."
    )
    sla_passed: bool | None = Field(default=None, description="SLA verdict.")
    rank: int | None = Field(default=None, description="1 is the winner; unranked: did not pass.")
    run: str | None = Field(default=None, description="Its run directory.")
    report: str | None = Field(default=None, description="Its HTML report.")


class TournamentRun(StatusModel):
    """An earlier generation of the tournament, kept in status.runs."""

    generation: int = Field(description="metadata.generation of the round.")
    phase: str = Field(description="Where it ended (Superseded when cut short).")
    winner: str | None = Field(default=None, description="The winning candidate.")
    message: str | None = Field(default=None, description="Why it ended there.")
    leaderboard: list[LeaderboardEntry] = Field(default_factory=list, description="Its ranking.")
    finished_at: str | None = Field(default=None, description="When it ended.")


class FineTuneTournamentStatus(StatusModel):
    """Observed state, written by the operator."""

    phase: TournamentPhase | None = Field(default=None, description="Where the tournament is.")
    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation this status describes."
    )
    message: str | None = Field(default=None, description="The latest event, for a person.")
    conditions: list[Condition] = Field(
        default_factory=list, description="Ready, Reconciling, Stalled."
    )
    leaderboard: list[LeaderboardEntry] = Field(
        default_factory=list, description="Every candidate, ranked once settled."
    )
    leader: str | None = Field(default=None, description="The best candidate settled so far.")
    done: str | None = Field(default=None, description="Candidates settled, e.g. 2/3.")
    winner: str | None = Field(default=None, description="The winning candidate.")
    promoted_model: str | None = Field(default=None, description="URI of the promoted copy.")
    report: str | None = Field(default=None, description="The tournament's HTML report.")
    approved_generation: int | None = Field(
        default=None, description="The generation the finetune.dev/approve annotation approved."
    )
    started_at: str | None = Field(default=None, description="When this generation started.")
    runs: list[TournamentRun] = Field(
        default_factory=list, description="Earlier generations, newest first (5)."
    )


class LeaderboardCandidate(StatusModel):
    """A candidate in leaderboard.json."""

    name: str
    phase: str | None = None
    eval_loss: float | None = None
    bits_per_byte: float | None = None
    perplexity: float | None = None
    sla_passed: bool | None = None
    rank: int | None = None


class LeaderboardFile(StatusModel):
    """tournaments/<namespace>/<name>/g<gen>/report/leaderboard.json."""

    winner: str | None = None
    metric: str
    candidates: list[LeaderboardCandidate] = Field(default_factory=list)


# ------------------------------------------------------------------ merging


def merge(template: Any, override: Any, path: tuple[str, ...] = ()) -> Any:
    """`override` deep-merged over `template`: mappings key by key, anything else (lists
    included) replaced, except benchmark.sla, merged by profile name."""
    if not (isinstance(template, dict) and isinstance(override, dict)):
        return copy.deepcopy(override)
    merged = copy.deepcopy(template)
    for key, value in override.items():
        where = (*path, key)
        if where == SLA_PATH and isinstance(value, list) and isinstance(merged.get(key), list):
            merged[key] = merge_profiles(merged[key], value)
        elif key in merged:
            merged[key] = merge(merged[key], value, where)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def merge_profiles(template: list[Any], override: list[Any]) -> list[Any]:
    """SLA profiles by name: a candidate's profile merges over the template's of the same
    name, new names are appended; a list that is not of named profiles replaces."""
    if not all(isinstance(p, dict) and "name" in p for p in template + override):
        return copy.deepcopy(override)
    by_name = {p["name"]: p for p in override}
    merged = [merge(p, by_name.pop(p["name"])) if p["name"] in by_name else p for p in template]
    return copy.deepcopy(merged) + [copy.deepcopy(p) for p in override if p["name"] in by_name]


def child_name(tournament: str, candidate: str) -> str:
    return f"{tournament}-{candidate}"


def alias_of(spec: FineTuneTournamentSpec, name: str) -> str:
    return spec.promotion.alias or name


def child_spec(spec: FineTuneTournamentSpec, name: str, candidate: Candidate) -> dict[str, Any]:
    """The child FineTuneJob's spec (wire form): the candidate over the template, with the
    tournament's promotion (policy none: the child never promotes) and selection dataset."""
    merged: dict[str, Any] = merge(spec.template, candidate.overrides())
    merged["promotion"] = {
        "policy": "none",
        "alias": alias_of(spec, name),
        "requireImprovement": spec.promotion.require_improvement,
    }
    if spec.selection.dataset is not None:
        evaluation = merged.get("evaluation")
        merged["evaluation"] = {
            **(evaluation if isinstance(evaluation, dict) else {}),
            "dataset": spec.selection.dataset.to_wire(),
        }
    return merged


# ------------------------------------------------------------------ validation


@dataclass(frozen=True)
class Tournament:
    """A validated FineTuneTournament: identity, spec, and each candidate's child spec."""

    name: str
    namespace: str | None
    generation: int
    spec: FineTuneTournamentSpec
    children: dict[str, FineTuneJobSpec]  # candidate name -> its FineTuneJob spec
    annotations: dict[str, str]


def _has(document: Any, loc: tuple[int | str, ...]) -> bool:
    for part in loc:
        in_list = isinstance(part, int) and isinstance(document, list) and part < len(document)
        in_map = isinstance(part, str) and isinstance(document, dict) and part in document
        if not (in_list or in_map):
            return False
        document = document[part]
    return True


def _located(
    error: ValidationError, index: int, candidate: Candidate, template: dict[str, Any]
) -> list[Problem]:
    """A merged spec's problems, each named where it was written: the candidate's own field,
    else the template's, else (a required field nobody set) the candidate."""
    problems = []
    for detail, problem in zip(error.errors(), problems_from(error, ""), strict=True):
        loc = tuple(detail["loc"])
        if _has(candidate.overrides(), loc) or not _has(template, loc):
            where = f"spec.candidates[{index}]"
        else:
            where = "spec.template"
        problems.append(Problem(where + problem.path, problem.message))
    return problems


def spec_problems(
    spec: FineTuneTournamentSpec, name: str
) -> tuple[dict[str, FineTuneJobSpec], list[Problem]]:
    """Each candidate's child spec, and every problem of the tournament: names, the merged
    specs, and what makes the candidates incomparable."""
    problems: list[Problem] = []
    children: dict[str, FineTuneJobSpec] = {}
    seen: set[str] = set()
    for field, why in RESERVED.items():
        if field in spec.template:
            problems.append(Problem(f"spec.template.{field}", why))
    for index, candidate in enumerate(spec.candidates):
        if candidate.name in seen:
            problems.append(Problem(f"spec.candidates[{index}].name", "duplicate candidate name"))
            continue
        seen.add(candidate.name)
        job = child_name(name, candidate.name)
        if len(job) > MAX_NAME_LENGTH:
            problems.append(
                Problem(
                    f"spec.candidates[{index}].name",
                    f"the FineTuneJob {job!r} would be longer than {MAX_NAME_LENGTH} characters: "
                    "shorten the tournament's or the candidate's name",
                )
            )
        for field, why in RESERVED.items():
            if field in candidate.overrides():
                problems.append(Problem(f"spec.candidates[{index}].{field}", why))
        try:
            children[candidate.name] = FineTuneJobSpec.model_validate(
                child_spec(spec, name, candidate)
            )
        except ValidationError as error:
            problems += [
                p for p in _located(error, index, candidate, spec.template) if p not in problems
            ]
    if len(children) == len(spec.candidates):
        problems += _comparability(spec, children)
    return children, problems


def _comparability(
    spec: FineTuneTournamentSpec, children: dict[str, FineTuneJobSpec]
) -> list[Problem]:
    problems = []
    datasets = {name: child.dataset.uri for name, child in children.items()}
    if len(set(datasets.values())) > 1 and spec.selection.dataset is None:
        listed = ", ".join(f"{name}: {uri}" for name, uri in datasets.items())
        problems.append(
            Problem(
                "spec.selection.dataset",
                f"required when the candidates train on different datasets ({listed}): "
                "every candidate must be evaluated on the same held-out chats",
            )
        )
    models = {name: child.resolve().model_id for name, child in children.items()}
    if spec.selection.metric == "evalLoss" and len(set(models.values())) > 1:
        listed = ", ".join(f"{name}: {model}" for name, model in models.items())
        problems.append(
            Problem(
                "spec.selection.metric",
                f"evalLoss compares per-token losses, which differ between tokenizers ({listed});"
                " use bitsPerByte",
            )
        )
    return problems


def parse_tournament(doc: Any) -> Tournament:
    """Validate a whole FineTuneTournament object; InvalidManifest names every bad field."""
    if not isinstance(doc, dict):
        raise InvalidManifest([Problem("(document)", "must be a mapping")])
    problems: list[Problem] = []
    if doc.get("apiVersion") != API_VERSION:
        problems.append(Problem("apiVersion", f"must be {API_VERSION}"))
    if doc.get("kind") != TOURNAMENT_KIND:
        problems.append(Problem("kind", f"must be {TOURNAMENT_KIND}"))
    meta = doc.get("metadata")
    problems += check_metadata(meta)
    raw = doc.get("spec")
    spec: FineTuneTournamentSpec | None = None
    if not isinstance(raw, dict):
        problems.append(Problem("spec", "required (a mapping)"))
    else:
        try:
            spec = FineTuneTournamentSpec.model_validate(raw)
        except ValidationError as error:
            problems += problems_from(error)
    children: dict[str, FineTuneJobSpec] = {}
    if spec is not None and isinstance(meta, dict) and isinstance(meta.get("name"), str):
        children, more = spec_problems(spec, meta["name"])
        problems += more
    if problems or spec is None or not isinstance(meta, dict):
        raise InvalidManifest(problems)
    return Tournament(
        name=meta["name"],
        namespace=meta.get("namespace"),
        generation=int(meta.get("generation") or 1),
        spec=spec,
        children=children,
        annotations=dict(meta.get("annotations") or {}),
    )
