"""Which generation a `finetune run` works on.

A local run has no API server to count generations, so the store is the record: the newest
`runs/<ns>/<name>/g<N>/` (finetune_core.runs) decides whether `finetune run` resumes that
generation, reports its result, or starts generation N+1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from finetune_core.api import SETTLED_PHASES, ResolvedSpec
from finetune_core.runs import RunSnapshot


@dataclass(frozen=True)
class GenerationChoice:
    """What `finetune run` does with a manifest, given the newest run of the same job."""

    generation: int
    action: Literal["start", "resume", "report"]
    why: str


def choose_generation(
    spec: ResolvedSpec, latest: RunSnapshot | None, dataset_sha256: str | None
) -> GenerationChoice:
    """Start a new generation when the inputs changed, else resume or report the newest.

    The inputs are the resolved spec and, where both are known, the dataset file's digest:
    editing a local dataset in place retrains like a new dataset version would. A settled run
    with an unchanged spec is reported, not repeated (like `kubectl apply` of an unchanged
    object), except a Failed one: running it again retries the stage that failed.
    """
    if latest is None:
        return GenerationChoice(1, "start", "first run of this job")
    generation = latest.paths.generation
    if latest.config.spec.to_wire() != spec.to_wire():
        return GenerationChoice(
            generation + 1, "start", f"the spec changed since generation {generation}"
        )
    trained_on = latest.status.metrics.dataset_sha256 if latest.status.metrics else None
    if dataset_sha256 and trained_on and trained_on != dataset_sha256:
        return GenerationChoice(
            generation + 1, "start", f"the dataset changed since generation {generation}"
        )
    phase = latest.status.phase or "Pending"
    if phase == "Failed":
        return GenerationChoice(
            generation, "resume", f"retrying generation {generation}, which failed"
        )
    if phase in SETTLED_PHASES:
        return GenerationChoice(
            generation,
            "report",
            f"generation {generation} already ran this spec ({phase}); change the spec to retrain",
        )
    return GenerationChoice(generation, "resume", f"resuming generation {generation} ({phase})")
