"""One `finetune run` of a job at a time: a lock object beside its runs, created only if
absent (a conditional write, so two machines sharing a bucket are excluded too)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

from finetune_core.clock import timestamp
from finetune_core.store import ArtifactStore


class RunLocked(RuntimeError):
    """Another process runs this job now."""


def lock_key(namespace: str, name: str) -> str:
    return f"runs/{namespace}/{name}/run.lock"


def _alive(pid: object) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def run_lock(store: ArtifactStore, namespace: str, name: str) -> Iterator[None]:
    """Hold the job's lock while the body runs. A lock left by a process of this host that
    is gone is taken over; one held elsewhere raises RunLocked naming its holder."""
    key = lock_key(namespace, name)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": timestamp()}
    for _ in range(2):
        if store.put_json_if(key, me, None):
            break
        holder = store.get_json_or_none(key) or {}
        if holder.get("host") == me["host"] and not _alive(holder.get("pid")):
            store.delete(key)  # its process died without releasing it
            continue
        raise RunLocked(
            f"{namespace}/{name} is being run by process {holder.get('pid')} on "
            f"{holder.get('host')} since {holder.get('since')}; if that process is gone, "
            f"delete {store.uri(key)}"
        )
    else:
        raise RunLocked(f"{namespace}/{name}: could not take {store.uri(key)}")
    try:
        yield
    finally:
        store.delete(key)
