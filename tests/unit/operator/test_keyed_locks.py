"""One holder per key at a time; other keys go on meanwhile; no lock outlives its use."""

from __future__ import annotations

import asyncio
import gc

from finetune_operator.keyed_locks import KeyedLocks


async def test_holders_of_one_key_take_turns_and_other_keys_do_not_wait() -> None:
    locks = KeyedLocks()
    inside: dict[str, int] = {"a": 0, "b": 0}
    most: dict[str, int] = {"a": 0, "b": 0}
    b_done = asyncio.Event()
    release_a = asyncio.Event()

    async def hold(key: str, until: asyncio.Event | None) -> None:
        async with locks.hold(key):
            inside[key] += 1
            most[key] = max(most[key], inside[key])
            if until is not None:
                await until.wait()
            else:
                await asyncio.sleep(0)
            inside[key] -= 1
        if key == "b":
            b_done.set()

    a_tasks = [asyncio.create_task(hold("a", release_a)) for _ in range(5)]
    b_task = asyncio.create_task(hold("b", None))
    # "b" finishes while the first holder of "a" still holds it.
    await asyncio.wait_for(b_done.wait(), timeout=10)
    assert inside["a"] == 1
    release_a.set()
    await asyncio.wait_for(asyncio.gather(*a_tasks, b_task), timeout=10)
    assert most == {"a": 1, "b": 1}


async def test_no_lock_is_kept_once_nobody_holds_or_waits() -> None:
    locks = KeyedLocks()
    for key in ("a", "b", "c"):
        async with locks.hold(key):
            assert len(locks) >= 1
    gc.collect()
    assert len(locks) == 0
