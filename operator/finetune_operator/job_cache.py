"""The Jobs of each FineTuneJob as the operator's watch saw them, instead of a LIST per pass.

A reconcile pass needs the object's Jobs. Listing them from the API server on every pass
costs a request each time and, at a thousand objects, a server-side filter over every Job
in the namespace. kopf already watches the Jobs (for the handlers that start reconciles);
its index `jobs_by_owner` (handlers.register) keeps each Job's summary
(`observe.job_summary`) under (namespace, FineTuneJob name), filled from the initial
listing before any handler runs and kept current by the watch.

A watch lags behind the operator's own writes, though: the pass right after a create may
run before the Job's ADDED event, and would take the Job for lost. So, like the
expectations of Kubernetes' own controllers, the cache adds the Jobs this operator created
until the watch shows them, and hides those it deleted until the watch drops them. Without
an index (kopf not started yet, or stopped) the caller lists from the API server.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

Key = tuple[str, str]  # (namespace, FineTuneJob name)
Job = Mapping[str, Any]


def _uid(job: Job) -> str:
    return str((job.get("metadata") or {}).get("uid") or "")


class JobCache:
    """kopf's index of Jobs by owner, plus this operator's creations and deletions that the
    watch has not shown yet."""

    def __init__(self) -> None:
        self._index: Mapping[Key, Iterable[Job]] | None = None
        self._created: dict[Key, dict[str, Job]] = {}  # uid -> the Job as created
        self._deleted: dict[Key, set[str]] = {}  # uids

    @property
    def ready(self) -> bool:
        return self._index is not None

    def use(self, index: Mapping[Key, Iterable[Job]] | None) -> None:
        """Read from this index (kopf's, live) from now on; None: no index, list instead.
        A new index (kopf started again) was filled from a fresh listing: what was expected
        of the old one is in it or gone."""
        if index is not self._index:
            self._created.clear()
            self._deleted.clear()
        self._index = index

    def jobs(self, namespace: str, owner: str) -> list[Job]:
        """The owner's Jobs: the watch's, less those deleted, plus those created since."""
        assert self._index is not None, "no index: list the Jobs from the API server"
        key = (namespace, owner)
        seen = list(self._index.get(key, ()))
        uids = {_uid(job) for job in seen}
        created, deleted = self._created.get(key, {}), self._deleted.get(key, set())
        for uid in [uid for uid in created if uid in uids]:
            del created[uid]  # the watch shows it now
        deleted &= uids  # the rest the watch has dropped
        jobs = [job for job in seen if _uid(job) not in deleted]
        jobs += created.values()
        self._tidy(key)
        return jobs

    def created(self, namespace: str, owner: str, job: Job) -> None:
        """A Job this operator just created (the API server's answer)."""
        if uid := _uid(job):
            self._created.setdefault((namespace, owner), {})[uid] = job

    def deleted(self, namespace: str, owner: str, job: Job) -> None:
        """A Job this operator just deleted."""
        key = (namespace, owner)
        if uid := _uid(job):
            self._deleted.setdefault(key, set()).add(uid)
            self._created.get(key, {}).pop(uid, None)

    def observed(self, namespace: str, owner: str, uid: str) -> Job | None:
        """The watch's event about a Job: its creation is expected no longer, whatever the
        event (kopf may merge a Job's ADDED and DELETED events into the last one, which the
        index then never shows). A deletion needs no such help: `jobs` forgets it once the
        index has dropped the Job. The Job as this operator created it, if it was expected."""
        key = (namespace, owner)
        expected = self._created.get(key, {}).pop(uid, None)
        self._tidy(key)
        return expected

    def forget(self, namespace: str, owner: str) -> None:
        self._created.pop((namespace, owner), None)
        self._deleted.pop((namespace, owner), None)

    def _tidy(self, key: Key) -> None:
        if not self._created.get(key, True):
            del self._created[key]
        if not self._deleted.get(key, True):
            del self._deleted[key]
