"""The Kubernetes API the operator's tests run against: kmock's KubernetesEmulator plus the
server-side behaviour kopf and the operator rely on.

kmock 0.8 keeps objects as plain JSON and leaves out what an API server maintains. This
subclass adds it, in the spirit of the real server:
- metadata: uid, creationTimestamp, resourceVersion (one counter, bumped by every change),
  generation (1 on create, +1 when anything outside metadata and status changes), the
  namespace of the URL, and a name for `generateName` (kopf's Events);
- PATCH: JSON patch with a failing `test` op answers 422 (kopf retries its finalizer patch
  on it), merge patch per RFC 7386, with a `metadata.resourceVersion` in it as a
  precondition (409 Conflict when stale); a no-op patch changes nothing (no new version, no watch
  event); with a status subresource, /status changes only .status and the main endpoint
  never changes .status;
- optionally (`faults`), a seeded share of the operator's requests answered with 500, 429,
  409 or a stall, for the chaos suite;
- lists honour labelSelector and carry the current resourceVersion; a watch takes its
  snapshot (or, with ?resourceVersion=, the events after it) and subscribes in one step,
  so nothing that happens meanwhile is lost;
- the requests received are in `served()` (kmock's own record keeps only those in flight:
  it matches each request against all it recorded, which made the n-th request cost O(n)).

It overrides kmock internals (`_handle`, `_serve_list`, `_serve_watch`, `_lock`, `_buses`,
`_objects`, `_requests`), hence the exact pin `kmock==0.8`.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import random
import secrets
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import attrs
import jsonpatch
import kmock
from kmock._internal import references, rendering

from finetune_core.lifecycle import merge_patch

GONE_AFTER_FINALIZERS = "deletionTimestamp"
MUTATIONS = (kmock.action.CREATE, kmock.action.UPDATE, kmock.action.DELETE)
Key = tuple[references.resource, str | None, str]


def selector_matches(selector: str, labels: Mapping[str, str]) -> bool:
    """Equality-based label selectors: `k=v`, `k==v`, `k!=v`, `k`, `!k`, comma-separated."""
    for term in filter(None, (part.strip() for part in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _content(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What a change of bumps metadata.generation: everything but metadata and status."""
    return {key: value for key, value in obj.items() if key not in ("metadata", "status")}


# The operator's two clients (kopf's and the official one); the tests' own requests, which
# play the Job controller and the users, are never faulted.
OPERATOR_AGENTS = ("kopf/", "OpenAPI-Generator/")
FAULT_KINDS = ("500", "429", "409", "stall")


@attrs.define
class Faults:
    """Answer a share of the operator's requests (seeded) as an overloaded or racing API
    server would: 500 InternalError, 429 TooManyRequests, 409 Conflict (only where a server
    can answer it: a create, patch or delete), or a stalled connection (the request waits
    `stall_seconds` and is then served, so a client that gave up may find it done)."""

    rate: float
    seed: int
    stall_seconds: float = 4.0
    kinds: tuple[str, ...] = FAULT_KINDS
    # Targeted faults for a test: only requests `only` accepts, at most `limit` of them.
    only: Callable[[rendering.Request], bool] | None = None
    limit: int | None = None
    injected: Counter[str] = attrs.field(factory=Counter, init=False)
    _random: random.Random = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._random = random.Random(self.seed)

    def draw(self, request: rendering.Request) -> str | None:
        agent = next(
            (value for key, value in request.headers.items() if key.lower() == "user-agent"), ""
        )
        if not agent.startswith(OPERATOR_AGENTS) or (self.only and not self.only(request)):
            return None
        if self.limit is not None and self.total >= self.limit:
            return None
        if self._random.random() >= self.rate:
            return None
        kinds = [kind for kind in self.kinds if kind != "409" or request.action in MUTATIONS]
        if not kinds:
            return None
        kind = self._random.choice(kinds)
        self.injected[kind] += 1
        return kind

    @property
    def total(self) -> int:
        return sum(self.injected.values())


@attrs.define(kw_only=True)
class ApiServer(kmock.KubernetesEmulator):
    """A KubernetesEmulator that behaves like an API server where kopf can tell."""

    faults: Faults | None = None
    _revision: int = attrs.field(default=0, init=False)
    _served: list[rendering.Request] = attrs.field(factory=list, init=False)
    _changes: dict[references.resource, list[tuple[int, dict[str, Any]]]] = attrs.field(
        factory=lambda: defaultdict(list), init=False
    )

    def _has_status(self, resource: references.resource) -> bool:
        return resource in self.resources and "status" in self.resources[resource].subresources

    def created(self, resource: references.resource) -> list[dict[str, Any]]:
        """Every object of a resource ever created, in order (deleted ones too)."""
        return [event["object"] for _, event in self._changes[resource] if event["type"] == "ADDED"]

    def served(self) -> list[rendering.Request]:
        """Every request received so far, in order.

        kmock finds the reaction to a request by testing it against filters over every
        request it has recorded, which makes serving the n-th request cost O(n): thousands
        of objects would measure the emulator, not the operator. So its own record holds only
        the requests in flight, and the full record is here."""
        return list(self._served)

    async def _handle(self, request: rendering.Request) -> Any:
        self._served.append(request)
        try:
            return await self._serve(request)
        finally:
            # Forget it by identity (kmock's requests compare by value).
            for index in range(len(self._requests) - 1, -1, -1):
                if self._requests[index] is request:
                    del self._requests[index]
                    break

    async def _serve(self, request: rendering.Request) -> Any:
        fault = self.faults.draw(request) if self.faults is not None else None
        if fault == "stall":
            await asyncio.sleep(self.faults.stall_seconds if self.faults else 0)
        elif fault == "500":
            raise kmock.KubernetesError(status=500, reason="InternalError", message="injected")
        elif fault == "429":
            raise kmock.KubernetesError(
                status=429,
                reason="TooManyRequests",
                message="injected",
                details={"retryAfterSeconds": 1},
            )
        elif fault == "409":
            raise kmock.KubernetesError(
                status=409,
                reason="Conflict",
                message="Operation cannot be fulfilled: the object has been modified (injected)",
            )
        if request.resource is not None and request.action in MUTATIONS:
            async with self._lock:
                await self._mutate(request)
        # Respond the way kmock does; our state is already in place.
        return await kmock.KubernetesScaffold._handle(self, request)

    async def _mutate(self, request: rendering.Request) -> None:
        resource = request.resource
        assert resource is not None
        if request.action == kmock.action.CREATE:
            await self._create(resource, request)
            return
        if request.name is None:  # collection operations: not used by the operator
            raise kmock.KubernetesError(status=405, reason="MethodNotAllowed")
        key: Key = (resource, request.namespace, request.name)
        if key not in self._objects or self._objects[key].deleted:
            raise kmock.KubernetesError(status=404, reason="NotFound", message=f"{key} not found")
        if request.action == kmock.action.UPDATE:
            await self._patch(key, request)
        else:
            await self._delete(key)

    async def _create(self, resource: references.resource, request: rendering.Request) -> None:
        # Stamped in place: kmock's response handler looks the object up by this name.
        obj = request.data
        meta = obj.setdefault("metadata", {})
        if request.namespace:
            meta["namespace"] = request.namespace
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)
        key: Key = (resource, meta.get("namespace"), meta["name"])
        if key in self._objects and not self._objects[key].deleted:
            raise kmock.KubernetesError(
                status=409, reason="AlreadyExists", message=f"{meta['name']} already exists"
            )
        if self._has_status(resource):
            obj.pop("status", None)
        meta.update(
            uid=str(uuid.uuid4()),
            creationTimestamp=_now(),
            generation=1,
            resourceVersion=self._bump(),
        )
        stored = copy.deepcopy(obj)
        if key in self._objects:
            self._objects[key].create(stored)
        else:
            self._objects[key] = stored
        await self._publish(resource, "ADDED", stored)

    async def _patch(self, key: Key, request: rendering.Request) -> None:
        resource = key[0]
        current = copy.deepcopy(self._objects[key].raw)
        if isinstance(request.data, list):
            try:
                patched = jsonpatch.apply_patch(current, request.data, in_place=False)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as error:
                raise kmock.KubernetesError(
                    status=422, reason="Invalid", message=str(error)
                ) from None
        elif isinstance(request.data, Mapping):
            # A resourceVersion in the patch is a precondition (optimistic concurrency, as
            # leader election relies on): a stale one answers 409 Conflict.
            expected = (request.data.get("metadata") or {}).get("resourceVersion")
            if expected is not None and expected != current["metadata"].get("resourceVersion"):
                raise kmock.KubernetesError(
                    status=409,
                    reason="Conflict",
                    message=f"{key[2]}: the object has been modified",
                )
            patched = merge_patch(current, request.data)
        else:
            raise kmock.KubernetesError(status=400, reason="BadRequest", message="no patch")
        if request.subresource == "status":
            patched = {**current, "status": patched.get("status")}
            if patched["status"] is None:
                del patched["status"]
        elif self._has_status(resource):
            patched.pop("status", None)
            if "status" in current:
                patched["status"] = current["status"]
        # The server owns these; a client's patch of them is ignored.
        for field in (
            "uid",
            "creationTimestamp",
            "generation",
            "resourceVersion",
            "namespace",
            "name",
        ):
            if field in current["metadata"]:
                patched.setdefault("metadata", {})[field] = current["metadata"][field]
        if patched == current:
            return
        if _content(patched) != _content(current):
            patched["metadata"]["generation"] = current["metadata"].get("generation", 1) + 1
        patched["metadata"]["resourceVersion"] = self._bump()
        self._objects[key].history.append(patched)
        await self._publish(resource, "MODIFIED", patched)
        meta = patched["metadata"]
        if meta.get(GONE_AFTER_FINALIZERS) and not meta.get("finalizers"):
            await self._remove(key)

    async def _delete(self, key: Key) -> None:
        obj = self._objects[key]
        meta = obj.raw["metadata"]
        if not meta.get("finalizers"):
            await self._remove(key)
        elif not meta.get(GONE_AFTER_FINALIZERS):
            marked = copy.deepcopy(obj.raw)
            marked["metadata"].update(
                {GONE_AFTER_FINALIZERS: _now(), "resourceVersion": self._bump()}
            )
            obj.history.append(marked)
            await self._publish(key[0], "MODIFIED", marked)

    async def _remove(self, key: Key) -> None:
        last = copy.deepcopy(self._objects[key].raw)
        last["metadata"]["resourceVersion"] = self._bump()
        self._objects[key].delete()
        await self._publish(key[0], "DELETED", last)

    def _bump(self) -> str:
        self._revision += 1
        return str(self._revision)

    async def _publish(self, resource: references.resource, kind: str, obj: Any) -> None:
        event = {"type": kind, "object": copy.deepcopy(obj)}
        self._changes[resource].append((self._revision, event))
        await self._buses[resource].put(event)

    # ---------------------------------------------------------------- reads

    def _selected(self, request: rendering.Request, obj: Mapping[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        if request.namespace is not None and meta.get("namespace") != request.namespace:
            return False
        if request.name is not None and meta.get("name") != request.name:
            return False
        return selector_matches(request.params.get("labelSelector", ""), meta.get("labels") or {})

    def _current(self, request: rendering.Request) -> list[dict[str, Any]]:
        return [
            copy.deepcopy(obj.raw)
            for (resource, _, _), obj in self._objects.items()
            if resource == request.resource and not obj.deleted and self._selected(request, obj.raw)
        ]

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        if request.resource not in self._get_resources():
            raise kmock.KubernetesResourceNotFoundError()
        async with self._lock:
            return {
                "apiVersion": "v1",
                "kind": "List",
                "metadata": {"resourceVersion": str(self._revision)},
                "items": self._current(request),
            }

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[rendering.Payload]:
        yield b""  # send the headers: the stream is open even if nothing happens
        assert request.resource is not None
        bus = self._buses[request.resource]
        since = request.params.get("resourceVersion", "")
        async with self._lock:  # every change is published under this lock
            mark = await bus.mark()
            if since and since != "0":
                backlog = [
                    event
                    for revision, event in self._changes[request.resource]
                    if revision > int(since) and self._selected(request, event["object"])
                ]
            else:
                backlog = [{"type": "ADDED", "object": obj} for obj in self._current(request)]
        try:
            for event in backlog:
                yield event
            async for event in mark:
                if self._selected(request, event["object"]):
                    yield event
        finally:
            await bus.unmark(mark)
