"""The newest version of each FineTuneJob the operator knows, so that a reconcile need not read
the object back from the API server.

Two sources: the watch's events and the answers to the operator's own status patches. The
answer to a patch is newer than any event the watch has not delivered yet (the server applied
the patch on top of those writes), and the watch delivers an object's events in order. So
once the operator has written an object, its events are taken again from the event of that
write on; the events before it are older than the answer already held. A listing (kopf
starts, or a watch starts over) shows each object as it is now, and is always taken.

A reconcile started by a Job's event or by the poll reads the object from here; without
this, each of them was a GET (about six per lifecycle). The object may have changed since,
by someone else: then its watch event is on its way and starts a reconcile of its own, as
a GET's answer could have gone stale just as well before the reconcile acted on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Key = tuple[str, str]  # (namespace, name)
Body = dict[str, Any]


def _version(body: Mapping[str, Any]) -> str | None:
    version = (body.get("metadata") or {}).get("resourceVersion")
    return str(version) if version is not None else None


def _slim(body: Mapping[str, Any]) -> Body:
    """The object without its managedFields: the reconcile never reads them, and at a
    thousand objects they are most of what would be held."""
    meta = body.get("metadata") or {}
    return {**body, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}


class LatestBodies:
    def __init__(self) -> None:
        self._bodies: dict[Key, Body] = {}
        # The resourceVersion of the operator's last write of an object, until its event
        # arrives: the events before it are older than the body held.
        self._awaited: dict[Key, str] = {}

    def seen(self, key: Key, body: Mapping[str, Any], listed: bool = False) -> None:
        """A watch event's body (`listed`: from a listing, not a change)."""
        version = _version(body)
        awaited = self._awaited.get(key)
        if awaited is not None and version != awaited and not listed:
            return  # older than the operator's last write
        self._awaited.pop(key, None)
        self._bodies[key] = _slim(body)

    def written(self, key: Key, body: Mapping[str, Any]) -> None:
        """The API server's answer to the operator's write of the object."""
        before = self._bodies.get(key)
        version = _version(body)
        self._bodies[key] = _slim(body)
        if version is not None and (before is None or _version(before) != version):
            self._awaited[key] = version
        else:
            # A write that changed nothing makes no event: there is none to wait for.
            self._awaited.pop(key, None)

    def get(self, key: Key) -> Body | None:
        """The newest body known; None when none is (read it from the API server). The
        caller must not change it in place."""
        return self._bodies.get(key)

    def forget(self, key: Key) -> None:
        self._bodies.pop(key, None)
        self._awaited.pop(key, None)

    def clear(self) -> None:
        """Forget every object: another operator may write them now (the Lease was lost)."""
        self._bodies.clear()
        self._awaited.clear()

    def __len__(self) -> int:
        return len(self._bodies)
