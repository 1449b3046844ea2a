"""The newest body of each object: an event older than the operator's own last write never
replaces the answer to that write."""

from __future__ import annotations

from typing import Any

from finetune_operator.latest_bodies import LatestBodies

KEY = ("ml", "demo")


def body(version: str, phase: str | None = None) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "demo",
            "resourceVersion": version,
            "managedFields": [{"manager": "kubectl"}],
        },
        "status": {"phase": phase} if phase else {},
    }


def test_events_before_the_operators_write_are_older_than_its_answer() -> None:
    latest = LatestBodies()
    assert latest.get(KEY) is None  # never seen: read it
    latest.seen(KEY, body("1"))
    latest.written(KEY, body("3", "Pending"))  # the patch was applied on top of "2"
    latest.seen(KEY, body("2"))  # someone's label, before the patch: already in "3"
    held = latest.get(KEY)
    assert held is not None and held["status"] == {"phase": "Pending"}
    assert "managedFields" not in held["metadata"]
    latest.seen(KEY, body("3", "Pending"))  # the write's own event
    latest.seen(KEY, body("4", "Pending"))  # newer: taken
    held = latest.get(KEY)
    assert held is not None and held["metadata"]["resourceVersion"] == "4"


def test_a_listing_is_taken_and_a_write_that_changed_nothing_awaits_no_event() -> None:
    latest = LatestBodies()
    latest.written(KEY, body("5", "Training"))
    latest.seen(KEY, body("7", "Training"), listed=True)  # the watch started over
    held = latest.get(KEY)
    assert held is not None and held["metadata"]["resourceVersion"] == "7"
    latest.written(KEY, body("7", "Training"))  # nothing to change: no event follows
    latest.seen(KEY, body("8", "Failed"))
    held = latest.get(KEY)
    assert held is not None and held["status"] == {"phase": "Failed"}
    latest.forget(KEY)
    assert latest.get(KEY) is None and len(latest) == 0
