"""Posting the operator's Kubernetes Events: in the background, a few at once, each object's
in the order they happened, and each Event once.

kopf's own posting names an Event only when the API server creates it (generateName), so a
post whose answer was lost (a timeout while a busy API server was still working on it) and
then retried left two copies: in a burst of 1,000 FineTuneJobs on a 2-core machine, 4 to 5 %
of some reasons were posted twice. Here an Event is named when it is queued, the way
client-go's recorder names them (the object's name, then the time in nanoseconds in hex, so
names sort in time): a retry of a post that did arrive is answered AlreadyExists and the
Event stays one. A post that keeps failing is given up after a few tries with a warning in
the log; Events are auxiliary, never a reason to hold up a reconcile.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import zlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from kubernetes.client.exceptions import ApiException

from finetune_core.lifecycle import Event
from finetune_operator.kube import Kube, NotLeading, refused_for_good

log = logging.getLogger(__name__)

COMPONENT = "finetune-operator"
# Posts in flight at once: enough to keep up after a burst, few enough that a burst of
# Events does not crowd out the Job creations and status patches of the same reconciles.
WORKERS = 4
# Seconds between the tries of one post; after the last, the Event is given up.
RETRY_SECONDS = (1.0, 2.0, 4.0, 8.0)


class EventPoster:
    """Queues Events (`post`, from the event loop) and posts them from worker tasks, from
    `start` until `stop` (which drops what was not posted yet)."""

    def __init__(self, kube: Kube, instance: str | None = None, workers: int = WORKERS):
        self._kube = kube
        self._instance = instance or socket.gethostname()
        self._workers = workers
        self._queues: list[asyncio.Queue[dict[str, Any]]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._last_ns = 0
        self._pending = 0  # queued or being posted

    def post(self, obj: Mapping[str, Any], event: Event) -> None:
        """Queue an Event on `obj` (timed now); one object's Events all go to one worker."""
        if not self._tasks:
            raise RuntimeError("Events are posted between start() and stop()")
        body = self.body(obj, event)
        uid = str(body["involvedObject"].get("uid") or body["involvedObject"]["name"])
        self._queues[zlib.crc32(uid.encode()) % self._workers].put_nowait(body)
        self._pending += 1

    def pending(self) -> int:
        """Events queued and not yet posted or given up."""
        return self._pending

    def start(self) -> None:
        self._queues = [asyncio.Queue() for _ in range(self._workers)]
        self._tasks = [
            asyncio.create_task(self._work(queue), name=f"event poster {index}")
            for index, queue in enumerate(self._queues)
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._pending:
            log.info("%d Events not posted: the operator stops", self._pending)
        self._tasks, self._queues, self._pending = [], [], 0

    def body(self, obj: Mapping[str, Any], event: Event) -> dict[str, Any]:
        meta = obj.get("metadata") or {}
        namespace, name = meta["namespace"], meta["name"]
        # Names stay unique even for two Events within one tick of the clock.
        self._last_ns = max(time.time_ns(), self._last_ns + 1)
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{name}.{self._last_ns:x}", "namespace": namespace},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion"),
                "kind": obj.get("kind"),
                "name": name,
                "namespace": namespace,
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": event.type,
            "reason": event.reason,
            "message": event.message,
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": self._instance,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }

    async def _work(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        while True:
            body = await queue.get()
            try:
                await self._send(body)
            finally:
                self._pending -= 1

    async def _send(self, body: Mapping[str, Any]) -> None:
        what = f"{body['metadata']['namespace']}/{body['involvedObject']['name']}: {body['reason']}"
        for delay in (*RETRY_SECONDS, None):
            try:
                await self._kube.create_event(body)
                return
            except NotLeading:
                return  # the next leader posts its own
            except ApiException as error:
                if refused_for_good(error):
                    log.warning("could not post the Event %s: %s", what, error.reason)
                    return
                failure: Exception = error
            except Exception as error:  # a timeout or a broken connection: try again
                failure = error
            if delay is None:
                log.warning("gave up posting the Event %s: %s", what, failure)
                return
            await asyncio.sleep(delay)
