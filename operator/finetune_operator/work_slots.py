"""A bounded number of reconciles at work at once; the rest wait their turn.

In a burst of a thousand creations every object's reconcile starts at once. Unbounded, each
holds its object, its manifests and its responses while it waits a step behind all the
others for a thread: the heap peaks (and Python keeps the peak), and every Job is created
late instead of most of them early. With a slot each, as many reconciles are at work as
there are threads for their calls, and the others wait holding only their event.

A reconcile that waits for something other than a thread gives its slot up meanwhile:
the promotions of runs that share an alias move it one at a time, and a wave of them
holding every slot would stop all other work behind that one alias.

Urgent work goes first: a free slot goes to the longest-waiting urgent reconcile, if any,
before the others. The controller marks the first reconcile of a new object urgent, so a
burst of creations gets its training Jobs before the runs already going get their next
step: each of those waits seconds at most, while a new object's wait is what its user sees.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class WorkSlots:
    def __init__(self, count: int) -> None:
        self._free = count
        self._waiting: tuple[deque[asyncio.Future[None]], ...] = (deque(), deque())  # urgent
        # Whether the task at hand holds one of these slots now, and how urgently it took it
        # (changed in place by given_up). One variable per instance: a slot of another is
        # not this one's.
        self._held: contextvars.ContextVar[list[bool] | None] = contextvars.ContextVar(
            "work_slot", default=None
        )

    async def _take(self, urgent: bool) -> None:
        if self._free > 0:
            self._free -= 1
            return
        queue = self._waiting[0 if urgent else 1]
        turn = asyncio.get_running_loop().create_future()
        queue.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._give()  # handed a slot in the very moment it was cancelled
            else:
                queue.remove(turn)
            raise

    def _give(self) -> None:
        """Hand a slot to the next waiting (urgent first), or free it."""
        for queue in self._waiting:
            while queue:
                turn = queue.popleft()
                if not turn.done():
                    turn.set_result(None)
                    return
        self._free += 1

    @asynccontextmanager
    async def held(self, urgent: bool = False) -> AsyncIterator[None]:
        """Run the block in a slot, once one is free (before the others when `urgent`)."""
        await self._take(urgent)
        held = [True, urgent]
        token = self._held.set(held)
        try:
            yield
        finally:
            self._held.reset(token)
            if held[0]:
                self._give()

    @asynccontextmanager
    async def given_up(self) -> AsyncIterator[None]:
        """Run the block without this task's slot (if it holds one), and take one again
        after it. Cancelled while waiting for it, the task holds none, and `held` frees
        none."""
        held = self._held.get()
        if held is None or not held[0]:
            yield
            return
        self._give()
        held[0] = False
        try:
            yield
        finally:
            await self._take(held[1])
            held[0] = True
