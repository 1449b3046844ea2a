"""A bounded number of reconciles at work at once; the rest wait their turn.

In a burst of a thousand creations every object's reconcile starts at once. Unbounded, each
holds its object, its manifests and its responses while it waits a step behind all the
others for a thread: the heap peaks (and Python keeps the peak), and every Job is created
late instead of most of them early. With a slot each, as many reconciles are at work as
there are threads for their calls, and the others wait holding only their event.

A reconcile that waits for something other than a thread gives its slot up meanwhile:
the promotions of runs that share an alias move it one at a time, and a wave of them
holding every slot would stop all other work behind that one alias.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class WorkSlots:
    def __init__(self, count: int) -> None:
        self._free = asyncio.Semaphore(count)
        # Whether the task at hand holds one of these slots now (a list: changed in place
        # by given_up). One variable per instance: a slot of another is not this one's.
        self._held: contextvars.ContextVar[list[bool] | None] = contextvars.ContextVar(
            "work_slot", default=None
        )

    @asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        """Run the block in a slot, once one is free."""
        await self._free.acquire()
        held = [True]
        token = self._held.set(held)
        try:
            yield
        finally:
            self._held.reset(token)
            if held[0]:
                self._free.release()

    @asynccontextmanager
    async def given_up(self) -> AsyncIterator[None]:
        """Run the block without this task's slot (if it holds one), and take one again
        after it. Cancelled while waiting for it, the task holds none, and `held` frees
        none."""
        held = self._held.get()
        if held is None or not held[0]:
            yield
            return
        self._free.release()
        held[0] = False
        try:
            yield
        finally:
            await self._free.acquire()
            held[0] = True
