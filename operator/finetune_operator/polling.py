"""The operator's own poll of runs in progress: what neither a FineTuneJob's nor a Job's watch
event tells (the pods' progress in the store), what a missed watch event would have told,
and the retry of a reconcile that failed.

Only objects whose run can move on without a new event are on the schedule (a settled
run, finished or awaiting approval, is not), each at its own interval (`poll_interval`).
Their first polls are spread over the interval rather than all at one moment, so a thousand
objects created together are polled as a steady trickle, and at most CONCURRENCY reconciles
of the poll run at once, so the poll never crowds out the reconciles that watch events start.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

from finetune_core.lifecycle import RunState, Step

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)

# Reconciles of the poll in flight at once. Each is mostly waiting on the API server and the
# store; more would only queue in the thread pool the blocking clients run in.
CONCURRENCY = 8

# While a stage waits for its pod, or a benchmark runs, a poll looks only for a pod stuck
# longer than the operator allows: this many looks per that limit.
STUCK_LOOKS = 4


def poll_interval(
    state: RunState, progress_interval: float, stuck_pod_seconds: float
) -> float | None:
    """How often an object is polled; None: not at all (its run is settled).

    Every `progress_interval` while a training pod runs: its progress is in the store, and
    no event tells of it. A stage whose pod has not started, and a benchmark (it writes no
    progress), move on by Job events only: the pod's start (the Job's ready count, kept by
    every Kubernetes the chart installs on) and its end. For them a poll can only find a
    pod stuck for longer than `stuck_pod_seconds`, or an event that was missed, and they
    are polled STUCK_LOOKS times per that limit. At a thousand queued Jobs that is one
    poll every 150 s each instead of every 15 s, each a read of the object and two of the
    store. Anything else (a failed reconcile's retry, a step between two stages) at the
    progress interval."""
    if state.settled:
        return None
    step = state.step
    if step is Step.TRAINING and state.train is not None and state.train.ready:
        return progress_interval
    if step in (Step.TRAINING, Step.BENCHMARKING):
        return max(progress_interval, stuck_pod_seconds / STUCK_LOOKS)
    return progress_interval


class Schedule:
    """When each object in progress is polled next (event-loop time)."""

    def __init__(self, interval: float, seed: int | None = None) -> None:
        self.interval = interval  # unless `keep` is given another
        self._due: dict[Key, float] = {}
        self._every: dict[Key, float] = {}
        self._random = random.Random(seed)

    def __len__(self) -> int:
        return len(self._due)

    def __contains__(self, key: object) -> bool:
        return key in self._due

    def keep(self, key: Key, now: float, interval: float | None = None) -> None:
        """Poll `key` every `interval` from now on (its first poll at a drawn moment within
        one interval). An object already on the schedule keeps its moment, unless the new
        interval brings it sooner: a reconcile every few seconds never postpones a poll."""
        every = self.interval if interval is None else interval
        self._every[key] = every
        first = now + every * self._random.uniform(0.5, 1.0)
        if key not in self._due or first < self._due[key]:
            self._due[key] = first

    def drop(self, key: Key) -> None:
        self._due.pop(key, None)
        self._every.pop(key, None)

    def clear(self) -> None:
        self._due.clear()
        self._every.clear()

    def take(self, now: float) -> list[Key]:
        """The objects due now, each moved on by one interval."""
        due = [key for key, at in self._due.items() if at <= now]
        for key in due:
            self._due[key] = max(self._due[key] + self._every[key], now)
        return due

    def next_at(self) -> float | None:
        return min(self._due.values(), default=None)


async def poll(schedule: Schedule, reconcile: Callable[[str, str], Awaitable[None]]) -> None:
    """Reconcile every object when it is due, until cancelled (then its reconciles too)."""
    loop = asyncio.get_running_loop()
    limit = asyncio.Semaphore(CONCURRENCY)
    running: dict[Key, asyncio.Task[None]] = {}

    async def one(key: Key) -> None:
        async with limit:
            try:
                await reconcile(*key)
            except Exception as error:  # counted and shown by the reconcile; polled again
                log.debug("%s/%s: poll failed: %s", key[0], key[1], error)
            finally:
                running.pop(key, None)

    try:
        while True:
            for key in schedule.take(loop.time()):
                # One poll per object at a time: when the polls fall behind (a burst of
                # creations on a busy CPU), an object due again while its last poll still
                # waits its turn is not queued twice; a backlog would outlive the runs.
                if key not in running:
                    running[key] = asyncio.create_task(one(key), name=f"poll {key[0]}/{key[1]}")
            next_at = schedule.next_at()
            wait = schedule.interval if next_at is None else next_at - loop.time()
            await asyncio.sleep(min(max(wait, 0.01), schedule.interval))
    finally:
        tasks = list(running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
