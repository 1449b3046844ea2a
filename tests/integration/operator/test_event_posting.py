"""The operator's Event posting against the emulator: each object's Events in order, each
once, and none by an operator that lost its Lease."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

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
    poster.start()
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


async def test_an_event_queued_when_the_lease_is_lost_is_dropped(api: ApiServer) -> None:
    """A former leader's Events are refused before they are sent, not retried until the
    Lease comes back: the next leader says what happens from then on."""
    kube = Kube.connect(5.0)
    poster = EventPoster(kube, instance="test")
    poster.start()
    obj = finetunejob("demo")
    try:
        kube.may_write = lambda: False
        poster.post(obj, Event("Normal", "Step", "as a former leader"))
        await until(lambda: poster.pending() == 0, "the first Event handled")
        kube.may_write = lambda: True
        poster.post(obj, Event("Normal", "Step", "as the leader"))
        await until(lambda: len(posted(api)) == 1, "the Event of the leader")
        assert poster.pending() == 0
        assert [e["message"] for e in posted(api)] == ["as the leader"]
    finally:
        await poster.stop()
        kube.close()


async def test_an_event_is_posted_only_between_start_and_stop(api: ApiServer) -> None:
    poster = EventPoster(Kube.connect(5.0), instance="test")
    with pytest.raises(RuntimeError):
        poster.post(finetunejob("early"), Event("Normal", "Step", "1"))
