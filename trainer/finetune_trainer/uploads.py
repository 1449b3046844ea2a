"""A background thread for store writes, so the training loop never waits on the network.

Tasks run one at a time, in the order submitted (a checkpoint's marker is written after its
files because it is a later step of the same task). A failing task is retried with
exponential backoff until it succeeds or the uploader is closed: a store outage delays the
uploads and never stops training. Tasks submitted under a slot (progress.json) replace a
pending task of the same slot, so an outage does not pile up stale progress writes, and a
failing one steps behind the other tasks, so it never holds up a checkpoint.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass
class _Task:
    name: str
    run: Callable[[], None]
    slot: str | None = None
    failures: int = 0


class BackgroundUploader:
    """Runs store writes in a daemon thread; see the module's docstring."""

    def __init__(self, first_retry_seconds: float = 1.0, max_retry_seconds: float = 30.0):
        self.first_retry_seconds = first_retry_seconds
        self.max_retry_seconds = max_retry_seconds
        self._tasks: deque[_Task] = deque()
        self._condition = threading.Condition()
        self._closing = False
        self._abandon = False
        self._busy = False
        self._thread = threading.Thread(target=self._work, name="uploader", daemon=True)
        self._thread.start()

    def submit(self, name: str, run: Callable[[], None], slot: str | None = None) -> None:
        """Queue a task; with a slot, it replaces a queued (not running) task of that slot."""
        with self._condition:
            if self._closing:
                raise RuntimeError("the uploader is closed")
            if slot is not None:
                running = 1 if self._busy else 0  # the task at the head is running: keep it
                queued = list(self._tasks)
                self._tasks = deque(
                    queued[:running] + [task for task in queued[running:] if task.slot != slot]
                )
            self._tasks.append(_Task(name, run, slot))
            self._condition.notify_all()

    @property
    def pending(self) -> int:
        with self._condition:
            return len(self._tasks) + self._busy

    def wait(self, timeout: float) -> bool:
        """Wait until every queued task is done; False if some are left at the deadline."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while self._tasks or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._condition.wait(left)
            return True

    def close(self, timeout: float) -> bool:
        """Finish the queue within timeout, then stop; False if tasks were abandoned."""
        with self._condition:
            self._closing = True
            self._condition.notify_all()
        done = self.wait(timeout)
        with self._condition:
            self._abandon = True
            if not done:
                names = [task.name for task in self._tasks]
                log.error("gave up on %d pending upload(s): %s", len(names), ", ".join(names))
            self._tasks.clear()
            self._condition.notify_all()
        return done

    def _next(self) -> _Task | None:
        with self._condition:
            while not self._tasks and not self._closing:
                self._condition.wait()
            if not self._tasks:
                return None
            self._busy = True
            return self._tasks[0]

    def _finish(self, task: _Task) -> None:
        with self._condition:
            if self._tasks and self._tasks[0] is task:
                self._tasks.popleft()
            self._busy = False
            self._condition.notify_all()

    def _put_back(self, task: _Task) -> None:
        """After a failure: a slot's task goes behind the other tasks (or is dropped if a
        newer one of its slot is queued), so a stale progress write never holds up a
        checkpoint; any other task stays first, keeping the order of the uploads."""
        with self._condition:
            self._busy = False
            if task.slot is None or len(self._tasks) < 2 or self._tasks[0] is not task:
                return
            self._tasks.popleft()
            if not any(queued.slot == task.slot for queued in self._tasks):
                self._tasks.append(task)

    def _backoff(self, seconds: float) -> bool:
        """Sleep before a retry; False when the uploader was told to give up meanwhile."""
        with self._condition:
            self._condition.wait_for(lambda: self._abandon, timeout=seconds)
            return not self._abandon

    def _work(self) -> None:
        delay = self.first_retry_seconds
        while (task := self._next()) is not None:
            try:
                task.run()
            except Exception as error:
                task.failures += 1
                log.warning(
                    "upload %s failed (%s: %s); retrying in %.0fs",
                    task.name,
                    type(error).__name__,
                    error,
                    delay,
                    extra={"upload": task.name, "attempt": task.failures},
                )
                self._put_back(task)
                self._backoff(delay)
                delay = min(delay * 2, self.max_retry_seconds)
                continue
            if task.failures:
                log.info("upload %s succeeded after %d failed attempts", task.name, task.failures)
            delay = self.first_retry_seconds
            self._finish(task)
