"""The background uploader: order, retries, coalesced progress, bounded close."""

from __future__ import annotations

import functools
import threading

import pytest

from finetune_trainer.uploads import BackgroundUploader


def test_tasks_run_in_order_and_failures_are_retried() -> None:
    done: list[str] = []
    failures = iter([OSError("store down"), OSError("still down")])

    def flaky() -> None:
        error = next(failures, None)
        if error:
            raise error
        done.append("checkpoint")

    uploader = BackgroundUploader(first_retry_seconds=0.01)
    uploader.submit("checkpoint", flaky)
    uploader.submit("marker", lambda: done.append("marker"))
    assert uploader.close(timeout=10)
    assert done == ["checkpoint", "marker"]


def test_a_slot_keeps_only_the_latest_queued_task() -> None:
    release = threading.Event()
    done: list[str] = []
    uploader = BackgroundUploader()

    def blocker() -> None:
        release.wait(10)

    uploader.submit("blocker", blocker)
    for value in ("p1", "p2", "p3"):
        uploader.submit(value, functools.partial(done.append, value), slot="progress")
    uploader.submit("other", lambda: done.append("other"))
    assert uploader.pending == 3  # the running blocker, the latest progress, the other one
    release.set()
    assert uploader.close(timeout=10)
    assert done == ["p3", "other"]


def test_close_gives_up_at_the_deadline(caplog: pytest.LogCaptureFixture) -> None:
    def never() -> None:
        raise OSError("store down")

    uploader = BackgroundUploader(first_retry_seconds=0.01, max_retry_seconds=0.02)
    uploader.submit("checkpoint step-5", never)
    assert not uploader.close(timeout=0.3)
    assert "gave up on 1 pending upload(s): checkpoint step-5" in caplog.text


def test_a_failing_slot_task_does_not_hold_up_the_others() -> None:
    done: list[str] = []
    outage = threading.Event()
    outage.set()

    def progress() -> None:
        if outage.is_set():
            raise OSError("store down")
        done.append("progress")

    def checkpoint() -> None:
        done.append("checkpoint")
        outage.clear()  # the store is back

    uploader = BackgroundUploader(first_retry_seconds=0.01)
    uploader.submit("progress.json", progress, slot="progress")
    uploader.submit("checkpoint step-2", checkpoint)
    assert uploader.close(timeout=10)
    assert done == ["checkpoint", "progress"]
