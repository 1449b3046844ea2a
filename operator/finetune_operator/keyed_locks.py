"""One asyncio lock per key, kept only while someone holds or waits for it.

The controller takes one per FineTuneJob (one reconcile of an object at a time) and one per
alias (one alias moved at a time: when many runs of one alias finish together, their
promotions would otherwise race for its conditional write, and every loser would read it
again, wait and write again, holding one of the API threads while it waits)."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager


class KeyedLocks:
    def __init__(self) -> None:
        # Weak: a key's lock goes away once nobody holds it or waits for it (whoever does
        # keeps a reference), so the table does not grow with every key ever used.
        self._locks: weakref.WeakValueDictionary[Hashable, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    @asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        async with lock:
            yield

    def __len__(self) -> int:
        return len(self._locks)
