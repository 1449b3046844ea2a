"""Reading and validating FineTuneJob manifests, with errors that name the field path."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from finetune_core.api import (
    API_VERSION,
    DNS_LABEL,
    KIND,
    MAX_NAME_LENGTH,
    FineTuneJobSpec,
)
from finetune_core.syntax import dns_label_problem, label_key_problem, label_value_problem

MAX_GENERATION = 2**63 - 1


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a manifest, located by its field path."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass(frozen=True)
class FineTuneJob:
    """A validated FineTuneJob: its identity and its parsed spec."""

    name: str
    namespace: str | None
    generation: int
    spec: FineTuneJobSpec
    annotations: dict[str, str]


class InvalidManifest(Exception):
    """Raised with every problem found in one manifest."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


# Steps pydantic adds to an error's location that are not fields (validator wrappers).
_NOT_A_FIELD = re.compile(r"(function|model)-[a-z-]+\[.*\]|\[key\]")
_PLAIN_KEY = re.compile(r"[A-Za-z_][-A-Za-z0-9_]*")


def _path(loc: tuple[int | str, ...], prefix: str) -> str:
    """`spec.benchmark.sla[0].name`; a key that is not a plain word is quoted (`['a.b']`),
    so that a path stays one line whatever keys a document holds."""
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _NOT_A_FIELD.fullmatch(part):
            continue
        elif _PLAIN_KEY.fullmatch(part):
            out += f".{part}"
        else:
            out += f"[{part!r}]"
    return out


_BOUNDS = {
    "greater_than_equal": ("ge", ">="),
    "greater_than": ("gt", ">"),
    "less_than_equal": ("le", "<="),
    "less_than": ("lt", "<"),
}


def _message(error: Any) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind in _BOUNDS:
        key, symbol = _BOUNDS[kind]
        return f"must be {symbol} {ctx[key]}"
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        return "unknown field (check the spelling; fields are camelCase)"
    if kind == "too_short":
        return "must not be empty"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return str(error["msg"]).removeprefix("Value error, ")


def problems_from(error: ValidationError, prefix: str = "spec") -> list[Problem]:
    """Pydantic errors as field paths in the manifest's own (camelCase) spelling."""
    return [Problem(_path(e["loc"], prefix), _message(e)) for e in error.errors()]


def check_name(name: Any) -> list[Problem]:
    """Child objects are named <name>-g<gen>-train, which must stay a valid DNS label."""
    if not isinstance(name, str) or not name:
        return [Problem("metadata.name", "required")]
    if len(name) > MAX_NAME_LENGTH:
        return [
            Problem(
                "metadata.name",
                f"must be at most {MAX_NAME_LENGTH} characters (it is {len(name)}) so that "
                f"{name[:10] + '...-g<generation>-train'!r} stays a valid Job name",
            )
        ]
    if not DNS_LABEL.fullmatch(name):  # match() would take a final newline
        return [
            Problem(
                "metadata.name",
                "must be lower-case letters, digits and '-', starting and ending with a letter "
                "or digit (it names Jobs and labels)",
            )
        ]
    return []


def check_namespace(namespace: Any) -> list[Problem]:
    """A namespace, when given, is a DNS label: a run's store path holds it, so a local run's
    must be what a cluster's could be (no '..', no '/')."""
    if namespace is None:
        return []
    if not isinstance(namespace, str):
        return [Problem("metadata.namespace", "must be a string (a DNS label)")]
    if problem := dns_label_problem(namespace):
        return [Problem("metadata.namespace", problem)]
    return []


def _label_problems(labels: Any) -> list[str]:
    if not isinstance(labels, dict):
        return ["must be a mapping of label keys to label values"]
    problems = []
    for key, value in labels.items():
        if not isinstance(key, str) or not isinstance(value, str):
            problems.append(f"{key!r}: keys and values must be strings")
        elif problem := label_key_problem(key) or label_value_problem(value):
            problems.append(problem)
    return problems


def check_metadata(meta: Any) -> list[Problem]:
    """The metadata a run is named by: a mapping with the name, and when given the
    namespace, the generation (an int64, as the API server keeps it), string annotations and
    labels the API server would take."""
    if meta is None:
        return check_name(None)
    if not isinstance(meta, dict):
        return [Problem("metadata", "must be a mapping (with the name)")]
    problems = check_name(meta.get("name")) + check_namespace(meta.get("namespace"))
    generation = meta.get("generation")
    if generation is not None and (
        not isinstance(generation, int)
        or isinstance(generation, bool)
        or not 1 <= generation <= MAX_GENERATION
    ):
        problems.append(
            Problem("metadata.generation", f"must be an integer in 1..{MAX_GENERATION}")
        )
    annotations = meta.get("annotations")
    if annotations is not None and not (
        isinstance(annotations, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in annotations.items())
    ):
        problems.append(Problem("metadata.annotations", "must be a mapping of strings to strings"))
    labels = meta.get("labels")
    if labels is not None:
        problems += [Problem("metadata.labels", problem) for problem in _label_problems(labels)]
    return problems


def parse_spec(spec: Any) -> FineTuneJobSpec:
    """Parse a spec dict; raises InvalidManifest naming every bad field."""
    if not isinstance(spec, dict):
        raise InvalidManifest([Problem("spec", "required (a mapping)")])
    try:
        return FineTuneJobSpec.model_validate(spec)
    except ValidationError as error:
        raise InvalidManifest(problems_from(error)) from None


def parse_manifest(doc: Any) -> FineTuneJob:
    """Validate a whole FineTuneJob object (as applied with kubectl or read from the API)."""
    if not isinstance(doc, dict):
        raise InvalidManifest([Problem("(document)", "must be a mapping")])
    problems: list[Problem] = []
    if doc.get("apiVersion") != API_VERSION:
        problems.append(Problem("apiVersion", f"must be {API_VERSION}"))
    if doc.get("kind") != KIND:
        problems.append(Problem("kind", f"must be {KIND}"))
    meta = doc.get("metadata")
    problems += check_metadata(meta)
    problems += [
        Problem(_path(loc, "metadata"), "a number beyond the 64-bit integers the API stores")
        for loc in _out_of_range(_written_by_users(meta), ())
    ]
    spec: FineTuneJobSpec | None = None
    try:
        spec = parse_spec(doc.get("spec"))
    except InvalidManifest as invalid:
        problems += invalid.problems
    if problems or spec is None or not isinstance(meta, dict):
        raise InvalidManifest(problems)
    return FineTuneJob(
        name=meta["name"],
        namespace=meta.get("namespace"),
        generation=int(meta.get("generation") or 1),
        spec=spec,
        annotations=dict(meta.get("annotations") or {}),
    )


INT64 = range(-(2**63), 2**63)


def _written_by_users(meta: Any) -> Any:
    """Metadata without managedFields: the API server's own record of who set which field
    (no numbers in it, and by far the largest part of a served object's metadata, walked
    on every reconcile)."""
    if isinstance(meta, dict) and "managedFields" in meta:
        return {k: v for k, v in meta.items() if k != "managedFields"}
    return meta


def _out_of_range(value: Any, loc: tuple[int | str, ...]) -> list[tuple[int | str, ...]]:
    """Where in metadata an integer sits that no int64 holds (the spec's numbers have
    bounds of their own; metadata.generation is checked with its own message)."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [] if value in INT64 or loc == ("generation",) else [loc]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _out_of_range(v, (*loc, str(k)))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _out_of_range(v, (*loc, i))]
    return []


def load_documents(path: Path) -> list[Any]:
    """Every YAML document in a file (empty documents skipped); yaml.YAMLError for a file
    that is not YAML (bytes that are not UTF-8 included)."""
    with path.open("rb") as handle:
        try:
            return [doc for doc in yaml.safe_load_all(handle) if doc is not None]
        except RecursionError:
            raise yaml.YAMLError("the document is nested too deeply to read") from None


def explain_file(path: Path) -> list[str]:
    """What a valid manifest's jobs will need: one line each with the GPU memory estimate."""
    from finetune_core import gpu_memory
    from finetune_core.tournament import TOURNAMENT_KIND, parse_tournament

    lines = []
    jobs: list[tuple[str, FineTuneJobSpec]] = []
    for doc in load_documents(path):
        if isinstance(doc, dict) and doc.get("kind") == TOURNAMENT_KIND:
            tournament = parse_tournament(doc)
            jobs += [(f"{tournament.name}-{c}", s) for c, s in tournament.children.items()]
        else:
            job = parse_manifest(doc)
            jobs.append((job.name, job.spec))
    for name, job_spec in jobs:
        spec = job_spec.resolve()
        shape = gpu_memory.shape_of(spec)
        if not job_spec.resources.gpus:
            need = "runs on CPU nodes (no GPU memory estimate)"
        elif shape is None:
            need = f"GPU memory: no estimate (the shape of {spec.model_id} is not known)"
        else:
            need = f"GPU memory: about {gpu_memory.estimate(spec, shape).describe()}"
        lines.append(f"{path}: {name}: {need}")
    return lines


def validate_file(path: Path) -> list[str]:
    """Problems in one manifest file, one line each, prefixed with the file (and document)."""
    try:
        docs = load_documents(path)
    except (OSError, yaml.YAMLError) as error:
        return [f"{path}: {' '.join(str(error).split())}"]
    if not docs:
        return [f"{path}: no FineTuneJob or FineTuneTournament in the file"]
    lines: list[str] = []
    for index, doc in enumerate(docs):
        where = f"{path}" if len(docs) == 1 else f"{path}[{index}]"
        try:
            parse_any(doc)
        except InvalidManifest as invalid:
            lines += [f"{where}: {problem}" for problem in invalid.problems]
    return lines


def parse_any(doc: Any) -> object:
    """A FineTuneJob or, by its kind, a FineTuneTournament; InvalidManifest otherwise."""
    from finetune_core.tournament import TOURNAMENT_KIND, parse_tournament

    if isinstance(doc, dict) and doc.get("kind") == TOURNAMENT_KIND:
        return parse_tournament(doc)
    return parse_manifest(doc)
