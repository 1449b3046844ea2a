"""GPU-hours and cost of a run: what its stages held, at the operator's price.

A stage's GPU-hours are its wall time (from its start to its end: a Job's startTime and
completionTime, or a local process's) times the GPUs it requested. A finished stage's hours
are recorded in status.cost.stages under the stage's name, so they stay counted after the
Job is gone (ttlSecondsAfterFinished) and each benchmark round counts once. A CPU run
(gpus: 0) holds no GPU: 0 hours, whatever it took.

While training, the projection adds the training stage's elapsed time at its last progress
report and that report's ETA. It changes only when progress.json does, so it costs no extra
status write between progress reports.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from finetune_core.api import Cost, Progress

SECONDS_PER_HOUR = 3600.0
HOURS_DIGITS = 4
COST_DIGITS = 2


@dataclass(frozen=True)
class StageTime:
    """One stage of the run as far as its cost goes."""

    name: str
    training: bool
    finished: bool
    started_at: str | None = None
    finished_at: str | None = None


@dataclass(frozen=True)
class Price:
    per_gpu_hour: float = 0.0
    currency: str = "USD"


def moment(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def stage_hours(stage: StageTime, gpus: int) -> float | None:
    """A finished stage's GPU-hours; None while it runs or when its times are unknown."""
    if not stage.finished:
        return None
    if gpus <= 0:
        return 0.0
    start, end = moment(stage.started_at), moment(stage.finished_at)
    if start is None or end is None:
        return None
    return round(max(0.0, (end - start).total_seconds()) * gpus / SECONDS_PER_HOUR, HOURS_DIGITS)


def is_training(name: str) -> bool:
    return name.endswith("-train")


def run_cost(
    recorded: Mapping[str, float],
    stages: list[StageTime],
    gpus: int,
    price: Price,
    progress: Progress | None = None,
) -> Cost:
    """The run's cost from what was recorded and the stages observed now."""
    hours = dict(recorded)
    running_training: StageTime | None = None
    for stage in stages:
        found = stage_hours(stage, gpus)
        if found is not None:
            hours[stage.name] = found
        elif stage.training and not stage.finished:
            running_training = stage
    training = round(sum(h for name, h in hours.items() if is_training(name)), HOURS_DIGITS)
    benchmark = round(sum(h for name, h in hours.items() if not is_training(name)), HOURS_DIGITS)
    total = round(training + benchmark, HOURS_DIGITS)
    projected = None
    if running_training is not None and gpus > 0:
        projected = _projection(running_training, gpus, progress)
        if projected is not None:
            projected = round(total + projected, HOURS_DIGITS)
    return Cost(
        gpu_hours=total,
        training_gpu_hours=training,
        benchmark_gpu_hours=benchmark,
        projected_gpu_hours=projected,
        estimated_cost=round(total * price.per_gpu_hour, COST_DIGITS),
        projected_cost=None
        if projected is None
        else round(projected * price.per_gpu_hour, COST_DIGITS),
        price_per_gpu_hour=price.per_gpu_hour,
        currency=price.currency,
        stages=hours,
    )


def _projection(stage: StageTime, gpus: int, progress: Progress | None) -> float | None:
    """GPU-hours the running training stage will have held when it ends, by its ETA."""
    if progress is None or progress.eta_seconds is None:
        return None
    start, reported = moment(stage.started_at), moment(progress.updated_at)
    if start is None or reported is None:
        return None
    elapsed = max(0.0, (reported - start).total_seconds())
    return (elapsed + max(0.0, progress.eta_seconds)) * gpus / SECONDS_PER_HOUR
