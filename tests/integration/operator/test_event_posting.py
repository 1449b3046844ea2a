"""The operator's Event posting against the emulator: each object's Events in order, each
once, and posting that starts again after it was stopped."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from finetune_core.lifecycle import Event
from finetune_operator.event_posting import COMPONENT, EventPoster
from finetune_operator.kube import Kube
from tests.integration.operator.emulator import ApiServer
from tests.integration.operator.harness import EVENTS

DEADLINE = 10.0


def finetunejob(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": "ml", "uid": f"uid-{name}"},
    }


def posted(api: ApiServer) -> list[dict[str, Any]]:
    return api.created(EVENTS)


async def until(check: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while not check():
        assert loop.time() < deadline, f"no {what} within {DEADLINE} s"
        await asyncio.sleep(0.02)


async def test_each_objects_events_are_posted_once_in_order(api: ApiServer) -> None:
    kube = Kube.connect(5.0)
    poster = EventPoster(kube, instance="test")
    objects = [finetunejob(f"job-{index}") for index in range(5)]
    for step in range(8):
        for obj in objects:
            poster.post(obj, Event("Normal", "Step", str(step)))
    try:
        await until(lambda: len(posted(api)) == 40, "40 Events")
        for obj in objects:
            mine = [
                e for e in posted(api) if e["involvedObject"]["name"] == obj["metadata"]["name"]
            ]
            assert [e["message"] for e in mine] == [str(step) for step in range(8)]
            # Named as they were queued: sorted by name is the order they happened in.
            names = [e["metadata"]["name"] for e in mine]
            assert names == sorted(names) and len(set(names)) == 8
            assert mine[0]["involvedObject"]["uid"] == obj["metadata"]["uid"]
            assert mine[0]["source"] == {"component": COMPONENT}
    finally:
        await poster.stop()
        kube.close()


async def test_posting_starts_again_after_it_was_stopped(api: ApiServer) -> None:
    """kopf cancels the workers when it stops (a lost Lease); the next leadership posts."""
    kube = Kube.connect(5.0)
    poster = EventPoster(kube, instance="test")
    try:
        poster.post(finetunejob("before"), Event("Normal", "Step", "1"))
        await until(lambda: len(posted(api)) == 1, "the first Event")
        await poster.stop()
        poster.post(finetunejob("after"), Event("Warning", "Step", "2"))
        await until(lambda: len(posted(api)) == 2, "the Event after the stop")
        assert posted(api)[1]["type"] == "Warning"
    finally:
        await poster.stop()
        kube.close()
