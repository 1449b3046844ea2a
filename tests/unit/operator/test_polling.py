"""The operator's poll: an object is polled once at a time, however far the polls fall behind,
and only as often as its run can move on without an event."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from finetune_operator.observe import run_state
from finetune_operator.polling import Schedule, poll, poll_interval
from tests.unit.operator.test_lifecycle import ftj, job


async def test_an_object_whose_poll_is_still_running_is_not_queued_again() -> None:
    schedule = Schedule(interval=0.01, seed=1)
    loop = asyncio.get_running_loop()
    for key in (("ns", "slow"), ("ns", "quick")):
        schedule.keep(key, loop.time())
    release = asyncio.Event()
    started: Counter[str] = Counter()
    in_flight: Counter[str] = Counter()
    most: Counter[str] = Counter()

    async def reconcile(namespace: str, name: str) -> None:
        started[name] += 1
        in_flight[name] += 1
        most[name] = max(most[name], in_flight[name])
        try:
            if name == "slow":
                await release.wait()
        finally:
            in_flight[name] -= 1

    polling = asyncio.create_task(poll(schedule, reconcile))
    try:
        # Many intervals pass while the slow object's first poll waits.
        async with asyncio.timeout(10):
            while started["quick"] < 30:
                await asyncio.sleep(0.01)
        assert started["slow"] == 1
        release.set()
        async with asyncio.timeout(10):
            while started["slow"] < 3:
                await asyncio.sleep(0.01)
    finally:
        polling.cancel()
        await asyncio.gather(polling, return_exceptions=True)
    assert most["slow"] == 1 and most["quick"] == 1


def test_each_object_is_polled_at_its_own_interval_and_a_shorter_one_brings_it_sooner() -> None:
    schedule = Schedule(interval=10.0, seed=2)
    schedule.keep(("ns", "queued"), 0.0, interval=100.0)
    schedule.keep(("ns", "running"), 0.0)
    polled: Counter[str] = Counter()
    for now in range(0, 301):
        polled.update(name for _, name in schedule.take(float(now)))
    assert 29 <= polled["running"] <= 30  # every 10 s
    assert 2 <= polled["queued"] <= 3  # every 100 s

    # The queued Job's pod starts: the progress interval from now on, the first poll within
    # it, not at the moment the slower interval had drawn.
    schedule.keep(("ns", "queued"), 301.0, interval=10.0)
    next_at = schedule.next_at()
    assert next_at is not None and next_at <= 311.0
    schedule.keep(("ns", "queued"), 302.0, interval=100.0)  # a slower one postpones nothing
    assert ("ns", "queued") in schedule.take(311.0)


def test_only_a_running_training_pod_is_polled_at_the_progress_interval() -> None:
    def interval(obj: dict[str, Any], *jobs: dict[str, Any], stuck: float = 600.0) -> float | None:
        return poll_interval(run_state(obj, jobs), 15.0, stuck)

    pending = ftj(status={"phase": "Pending", "observedGeneration": 1})
    assert interval(pending, job("train")) == 150.0  # the pod's start is a Job event
    assert interval(pending, job("train", ready=True)) == 15.0  # progress is in the store
    # No more often than the progress interval, whatever the stuck-pod limit.
    assert interval(pending, job("train"), stuck=20.0) == 15.0
    benchmarking = ftj(status={"phase": "Benchmarking", "observedGeneration": 1})
    running = job("benchmark", ready=True)
    assert interval(benchmarking, job("train", outcome="succeeded"), running) == 150.0
    trained = job("train", outcome="succeeded")
    assert interval(ftj(status={"phase": "Training", "observedGeneration": 1}), trained) == 15.0
    assert interval(ftj(status={"phase": "Promoted", "observedGeneration": 1})) is None
