"""A FineTuneJob manifest read for `finetune run`: validated, resolved, with every local file
made an absolute file:// URI (relative paths are relative to the manifest's folder)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import yaml
from rich.console import Console

from finetune_core.api import FineTuneJobSpec, ResolvedSpec
from finetune_core.manifest import InvalidManifest, Problem, load_documents, parse_manifest
from finetune_core.store import local_file_uri

LOCAL_NAMESPACE = "local"


@dataclass(frozen=True)
class LocalJob:
    """A validated manifest, ready to run here."""

    namespace: str
    name: str
    spec: ResolvedSpec
    gpus: int
    dataset_sha256: str | None
    uid: str | None = None  # the job's identity, kept in its runs' config.json


def _local_file(uri: str, base: Path, field_path: str) -> tuple[str, list[Problem]]:
    """The URI the stages read; a local file that does not exist is a problem of the field."""
    resolved = local_file_uri(uri, base)
    if resolved.startswith("file://") and not Path(resolved.removeprefix("file://")).is_file():
        return uri, [Problem(field_path, f"no such file: {resolved.removeprefix('file://')}")]
    return resolved, []


def localize(spec: FineTuneJobSpec, base: Path) -> FineTuneJobSpec:
    """The spec with every local file made absolute; InvalidManifest names missing files."""
    dataset_uri, problems = _local_file(spec.dataset.uri, base, "spec.dataset.uri")
    profiles = []
    for index, profile in enumerate(spec.benchmark.sla):
        if profile.prompts is None:
            profiles.append(profile)
            continue
        field_path = f"spec.benchmark.sla[{index}].prompts"
        prompts, missing = _local_file(profile.prompts, base, field_path)
        problems += missing
        profiles.append(profile.model_copy(update={"prompts": prompts}))
    evaluation = spec.evaluation
    if evaluation.dataset is not None:
        held_out, missing = _local_file(evaluation.dataset.uri, base, "spec.evaluation.dataset.uri")
        problems += missing
        dataset = evaluation.dataset.model_copy(update={"uri": held_out})
        evaluation = evaluation.model_copy(update={"dataset": dataset})
    if problems:
        raise InvalidManifest(problems)
    return spec.model_copy(
        update={
            "dataset": spec.dataset.model_copy(update={"uri": dataset_uri}),
            "benchmark": spec.benchmark.model_copy(update={"sla": profiles}),
            "evaluation": evaluation,
        }
    )


def load_job(path: Path) -> LocalJob:
    """Read, validate and resolve a one-job manifest; InvalidManifest on any problem."""
    try:
        documents = load_documents(path)
    except OSError as error:
        raise InvalidManifest([Problem("(file)", error.strerror or str(error))]) from None
    except yaml.YAMLError as error:
        raise InvalidManifest([Problem("(yaml)", " ".join(str(error).split()))]) from None
    if len(documents) != 1:
        found = f"{len(documents)} documents" if documents else "no document"
        raise InvalidManifest([Problem("(file)", f"expected one FineTuneJob, found {found}")])
    job = parse_manifest(documents[0])
    spec = localize(job.spec, path.resolve().parent)
    resolved = spec.resolve()
    digest = None
    if resolved.dataset.uri.startswith("file://"):
        with open(resolved.dataset.uri.removeprefix("file://"), "rb") as data:
            digest = hashlib.file_digest(data, "sha256").hexdigest()
    return LocalJob(
        job.namespace or LOCAL_NAMESPACE, job.name, resolved, spec.resources.gpus, digest
    )


def print_problems(console: Console, path: Path, problems: list[Problem]) -> None:
    for problem in problems:
        console.print(f"{path}: {problem}", markup=False, highlight=False)
