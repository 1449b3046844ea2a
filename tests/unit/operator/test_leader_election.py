"""The Lease protocol against an in-memory Lease with resourceVersion preconditions: who
may take it and when, measured on the candidate's own clock."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException

from finetune_operator.leader import LeaderElector, LeaseApi, LeaseConfig


class MemoryLeases(LeaseApi):
    """One namespace's Leases, with the API server's optimistic concurrency."""

    def __init__(self) -> None:
        self.leases: dict[str, dict[str, Any]] = {}
        self.version = 0

    async def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        lease = self.leases.get(name)
        return copy.deepcopy(lease) if lease else None

    async def create(self, namespace: str, lease: Mapping[str, Any]) -> None:
        name = lease["metadata"]["name"]
        if name in self.leases:
            raise ApiException(status=409, reason="Conflict")
        self.version += 1
        stored = copy.deepcopy(dict(lease))
        stored["metadata"]["resourceVersion"] = str(self.version)
        self.leases[name] = stored

    async def patch(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        lease = self.leases[name]
        if patch["metadata"]["resourceVersion"] != lease["metadata"]["resourceVersion"]:
            raise ApiException(status=409, reason="Conflict")
        lease["spec"].update(patch["spec"])
        self.version += 1
        lease["metadata"]["resourceVersion"] = str(self.version)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def elector(api: MemoryLeases, identity: str, clock: Clock) -> LeaderElector:
    config = LeaseConfig("ft", "ops", identity, 15.0, 10.0, 2.0)
    return LeaderElector(api, config, clock)


async def test_the_first_candidate_creates_the_lease_and_others_wait_for_it_to_expire() -> None:
    api, clock = MemoryLeases(), Clock()
    alpha, beta = elector(api, "alpha", clock), elector(api, "beta", clock)
    assert await alpha.try_acquire_or_renew()
    assert api.leases["ft"]["spec"]["holderIdentity"] == "alpha"
    assert not await beta.try_acquire_or_renew()

    clock.now += 14  # not yet expired as beta measures it: beta first saw it 14 s ago
    assert not await beta.try_acquire_or_renew()
    assert await alpha.try_acquire_or_renew()  # renewed: beta's count starts again
    assert not await beta.try_acquire_or_renew()  # from when beta sees the renewal
    clock.now += 14
    assert not await beta.try_acquire_or_renew()
    clock.now += 1.5  # 15.5 s without a renewal seen by beta
    assert await beta.try_acquire_or_renew()
    spec = api.leases["ft"]["spec"]
    assert (spec["holderIdentity"], spec["leaseTransitions"]) == ("beta", 1)
    assert not await alpha.try_acquire_or_renew()  # alpha sees beta's fresh renewal


async def test_a_released_lease_is_taken_at_once_and_only_by_one_candidate() -> None:
    api, clock = MemoryLeases(), Clock()
    alpha, beta, gamma = (elector(api, name, clock) for name in ("alpha", "beta", "gamma"))
    assert await alpha.acquire(_never)
    await alpha.release()
    assert api.leases["ft"]["spec"]["holderIdentity"] is None
    # beta and gamma both read the released Lease; only the first write wins.
    lease = await api.get("ops", "ft")
    assert lease is not None
    beta._observe(lease)
    gamma._observe(lease)
    assert await beta.try_acquire_or_renew()
    assert not await gamma.try_acquire_or_renew()
    assert api.leases["ft"]["spec"]["holderIdentity"] == "beta"


async def test_a_restarted_process_with_the_same_identity_takes_its_lease_back() -> None:
    api, clock = MemoryLeases(), Clock()
    assert await elector(api, "pod-0", clock).try_acquire_or_renew()
    # The container restarts (same pod name): no waiting for its own Lease to expire.
    assert await elector(api, "pod-0", clock).try_acquire_or_renew()


async def _never() -> bool:
    return False
