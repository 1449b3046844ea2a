"""A bounded number of reconciles at work at once; one waiting for its alias gives its slot
up, and takes one again after."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from finetune_operator.work_slots import WorkSlots


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + 5
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"not {what} within 5 s"
        await asyncio.sleep(0.001)


async def most_at_once(slots: WorkSlots, blocks: int = 3) -> int:
    """Run `blocks` blocks in `slots` together; how many were inside at once, at most."""
    held = peak = 0

    async def count() -> None:
        nonlocal held, peak
        async with slots.held():
            held += 1
            peak = max(peak, held)
            await asyncio.sleep(0)
            held -= 1

    await asyncio.wait_for(asyncio.gather(*(count() for _ in range(blocks))), 5)
    return peak


async def settle() -> None:
    """Let every task that can run do so (they only wait on each other here)."""
    for _ in range(20):
        await asyncio.sleep(0)


async def test_as_many_blocks_run_at_once_as_there_are_slots() -> None:
    slots, release = WorkSlots(2), asyncio.Event()
    running: set[int] = set()
    done: list[int] = []

    async def work(n: int) -> None:
        async with slots.held():
            running.add(n)
            await release.wait()
            running.discard(n)
            done.append(n)

    tasks = [asyncio.create_task(work(n)) for n in range(5)]
    await wait_until(lambda: len(running) == 2, "two at work")
    await settle()
    assert running == {0, 1}  # the other three wait for a slot
    release.set()
    await asyncio.gather(*tasks)
    assert sorted(done) == [0, 1, 2, 3, 4]


async def test_a_block_waiting_for_something_else_lets_another_take_its_slot() -> None:
    slots, alias, release = WorkSlots(1), asyncio.Lock(), asyncio.Event()
    order: list[str] = []

    async def promote() -> None:
        async with slots.held():
            async with slots.given_up(), alias:
                order.append("alias moved")
                await release.wait()
            order.append("promoted")

    async def other() -> None:
        async with slots.held():
            order.append("other")

    first = asyncio.create_task(promote())
    await wait_until(lambda: order == ["alias moved"], "the alias moved")
    second = asyncio.create_task(other())
    await wait_until(lambda: "other" in order, "the other at work meanwhile")
    release.set()
    await asyncio.gather(first, second)
    assert order == ["alias moved", "other", "promoted"]


async def test_cancelled_while_taking_its_slot_again_frees_none() -> None:
    slots, inside, leave, release = WorkSlots(1), asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def promote() -> None:
        async with slots.held():
            async with slots.given_up():
                inside.set()
                await leave.wait()
            raise AssertionError("cancelled before it had its slot again")

    async def hog() -> None:
        async with slots.held():
            await release.wait()

    first = asyncio.create_task(promote())
    await inside.wait()
    second = asyncio.create_task(hog())  # takes the slot given up
    await settle()
    leave.set()  # the first now waits for the slot the hog holds
    await settle()
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    release.set()
    await second
    # One slot, free again: one block at a time, and not none.
    assert await most_at_once(slots) == 1


async def test_giving_up_a_slot_of_one_set_leaves_another_set_alone() -> None:
    """A task in a slot of `outer` that enters `inner.given_up()` holds none of inner's, so
    frees none: meanwhile inner still has its one slot, not two."""
    outer, inner = WorkSlots(1), WorkSlots(1)
    async with outer.held(), inner.given_up():
        peak = await most_at_once(inner)
    assert peak == 1


class OneSlot:
    """One slot, held by "first" until released; each block records its turn."""

    def __init__(self) -> None:
        self.slots, self.release = WorkSlots(1), asyncio.Event()
        self.order: list[str] = []

    async def work(self, name: str, urgent: bool = False) -> None:
        async with self.slots.held(urgent):
            self.order.append(name)
            if name == "first":
                await self.release.wait()

    async def first_at_work(self) -> asyncio.Task[None]:
        first = asyncio.create_task(self.work("first"))
        await wait_until(lambda: self.order == ["first"], "the first at work")
        return first


async def test_a_free_slot_goes_to_urgent_work_before_work_that_waited_longer() -> None:
    one = OneSlot()
    first = await one.first_at_work()
    waiting = [asyncio.create_task(one.work("next step"))]
    await settle()
    waiting += [asyncio.create_task(one.work(f"new {n}", urgent=True)) for n in range(2)]
    await settle()
    one.release.set()
    await asyncio.gather(first, *waiting)
    assert one.order == ["first", "new 0", "new 1", "next step"]


async def test_a_waiter_cancelled_in_its_queue_takes_no_slot_from_the_others() -> None:
    one = OneSlot()
    first = await one.first_at_work()
    gone = asyncio.create_task(one.work("gone", urgent=True))
    later = asyncio.create_task(one.work("later"))
    await settle()
    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    one.release.set()
    await asyncio.gather(first, later)
    assert one.order == ["first", "later"]
    async with one.slots.held():  # the slot is free again
        pass
