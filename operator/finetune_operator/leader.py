"""Leader election on a coordination.k8s.io/v1 Lease: one operator process reconciles at a time.

The protocol is the one Kubernetes' own controllers use. A candidate reads the Lease; it
takes it when the Lease is absent (create), released (no holder), already its own, or not
renewed for leaseDurationSeconds as measured on the candidate's own clock since it last saw
the Lease change (so clocks of different machines never need to agree). Every write is a
merge patch carrying the resourceVersion that was read, so of two candidates that race for
the same Lease the API server lets exactly one through (the other gets 409 Conflict). The
leader renews every retry period; when it has not managed to for renew_deadline (shorter
than the lease duration, so it stops before anyone else may start), it stops leading. On a
clean stop it releases the Lease, and the next candidate takes over at once.

kopf's peering is not used for this: peers of equal priority all freeze, and it pauses
handlers rather than guaranteeing that exactly one process runs them.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from finetune_operator.kube import MERGE_PATCH, send_json

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def own_namespace(default: str = "finetune-system") -> str:
    """The namespace of the pod this process runs in (its service account's); out of a
    cluster, the chart's documented namespace, so that an operator run by hand joins the
    installed operator's election rather than holding a Lease of its own."""
    try:
        with open(SERVICE_ACCOUNT_NAMESPACE, encoding="utf-8") as file:
            return file.read().strip() or default
    except OSError:
        return default


def micro_time(moment: datetime | None = None) -> str:
    """A Lease's MicroTime: RFC 3339 with microseconds, in UTC."""
    return (moment or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class LeaseConfig:
    name: str
    namespace: str
    identity: str
    lease_duration: float
    renew_deadline: float
    retry_period: float


LEASES = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"


class LeaseApi:
    """The three Lease calls the election needs (get, create, patch), as plain dicts; each
    with a request timeout so that a stalled connection cannot outlive the renew deadline."""

    def __init__(self, api_client: client.ApiClient, timeout: float):
        self._client = api_client
        self._timeout = timeout

    async def _call(
        self, method: str, path: str, namespace: str, name: str | None = None, **kwargs: Any
    ) -> Any:
        params = (
            {"namespace": namespace} if name is None else {"namespace": namespace, "name": name}
        )
        return await asyncio.to_thread(
            send_json, self._client, method, path, params=params, timeout=self._timeout, **kwargs
        )

    async def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            lease: dict[str, Any] = await self._call("GET", LEASES + "/{name}", namespace, name)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return lease

    async def create(self, namespace: str, lease: Mapping[str, Any]) -> None:
        await self._call("POST", LEASES, namespace, body=dict(lease))

    async def patch(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        await self._call(
            "PATCH",
            LEASES + "/{name}",
            namespace,
            name,
            body=dict(patch),
            content_type=MERGE_PATCH,
        )


class LeaderElector:
    """Acquire, hold and release one Lease."""

    def __init__(
        self,
        api: LeaseApi,
        config: LeaseConfig,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.api = api
        self.config = config
        self._clock = clock
        self._observed: tuple[Any, ...] | None = None  # the last Lease record seen
        self._observed_at = 0.0  # when it was first seen (our clock)
        self._version: str | None = None  # its resourceVersion
        self.leading = False

    # ---------------------------------------------------------------- one attempt

    async def try_acquire_or_renew(self) -> bool:
        """One round of the protocol: True when this process holds the Lease afterwards."""
        c = self.config
        now = micro_time()
        try:
            lease = await self.api.get(c.namespace, c.name)
            if lease is None:
                await self.api.create(
                    c.namespace,
                    {
                        "apiVersion": "coordination.k8s.io/v1",
                        "kind": "Lease",
                        "metadata": {"name": c.name, "namespace": c.namespace},
                        "spec": {
                            "holderIdentity": c.identity,
                            "leaseDurationSeconds": _seconds(c.lease_duration),
                            "acquireTime": now,
                            "renewTime": now,
                            "leaseTransitions": 0,
                        },
                    },
                )
                return True
            spec = lease.get("spec") or {}
            self._observe(lease)
            holder = spec.get("holderIdentity") or ""
            ours = holder == c.identity
            if holder and not ours and not self._expired(spec):
                return False
            patch: dict[str, Any] = {
                "metadata": {"resourceVersion": lease["metadata"].get("resourceVersion")},
                "spec": {
                    "holderIdentity": c.identity,
                    "leaseDurationSeconds": _seconds(c.lease_duration),
                    "renewTime": now,
                },
            }
            if not ours:
                patch["spec"]["acquireTime"] = now
                patch["spec"]["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
            await self.api.patch(c.namespace, c.name, patch)
            return True
        except ApiException as error:
            if error.status != 409:  # 409: another candidate wrote first
                log.warning("lease %s/%s: %s %s", c.namespace, c.name, error.status, error.reason)
            return False
        except Exception as error:  # a connection refused, a timeout: try again later
            log.warning("lease %s/%s: %s", c.namespace, c.name, error)
            return False

    def _observe(self, lease: Mapping[str, Any]) -> None:
        spec = lease.get("spec") or {}
        record = (
            spec.get("holderIdentity"),
            spec.get("renewTime"),
            spec.get("acquireTime"),
            spec.get("leaseTransitions"),
        )
        if record != self._observed:
            self._observed, self._observed_at = record, self._clock()
        self._version = (lease.get("metadata") or {}).get("resourceVersion")

    def _expired(self, spec: Mapping[str, Any]) -> bool:
        duration = float(spec.get("leaseDurationSeconds") or self.config.lease_duration)
        return self._clock() >= self._observed_at + duration

    # ---------------------------------------------------------------- the loops

    async def acquire(self, stopping: Callable[[], Awaitable[bool]]) -> bool:
        """Try every retry period until the Lease is ours (True) or `stopping` says so."""
        c = self.config
        log.info("lease %s/%s: %s is a candidate", c.namespace, c.name, c.identity)
        while not await stopping():
            if await self.try_acquire_or_renew():
                self.leading = True
                log.info("lease %s/%s: %s is the leader", c.namespace, c.name, c.identity)
                return True
            await asyncio.sleep(self._jittered(c.retry_period))
        return False

    async def hold(self) -> None:
        """Renew every retry period; return when leadership is lost: someone else holds the
        Lease, or no renewal succeeded for renew_deadline. The caller stops reconciling."""
        c = self.config
        last = self._clock()
        while True:
            await asyncio.sleep(c.retry_period)
            # No asyncio.wait_for here (it spawns a task, which kopf would count as its own):
            # each call has a request timeout of half the renew deadline instead.
            if await self.try_acquire_or_renew():
                last = self._clock()
            elif self._taken() or self._clock() - last >= c.renew_deadline:
                break
        self.leading = False
        log.warning("lease %s/%s: %s lost the leadership", c.namespace, c.name, c.identity)

    def _taken(self) -> bool:
        """Whether the Lease, as last read, names another holder."""
        return self._observed is not None and self._observed[0] not in (
            None,
            "",
            self.config.identity,
        )

    async def release(self) -> None:
        """Give the Lease up (a clean stop) so that a candidate takes over without waiting."""
        if not self.leading:
            return
        self.leading = False
        c = self.config
        try:
            lease = await self.api.get(c.namespace, c.name)
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != c.identity:
                return
            await self.api.patch(
                c.namespace,
                c.name,
                {
                    "metadata": {"resourceVersion": lease["metadata"].get("resourceVersion")},
                    "spec": {
                        "holderIdentity": None,
                        "leaseDurationSeconds": 1,
                        "renewTime": micro_time(),
                    },
                },
            )
            log.info("lease %s/%s: %s released it", c.namespace, c.name, c.identity)
        except Exception as error:  # it expires by itself
            log.warning("lease %s/%s: not released: %s", c.namespace, c.name, error)

    def _jittered(self, period: float) -> float:
        return period * (1 + 0.2 * random.random())


def _seconds(value: float) -> int:
    return max(1, round(value))
