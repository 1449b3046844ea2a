"""The operator's poll: an object is polled once at a time, however far the polls fall behind."""

from __future__ import annotations

import asyncio
from collections import Counter

from finetune_operator.polling import Schedule, poll


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
