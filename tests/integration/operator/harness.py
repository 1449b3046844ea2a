"""A cluster for the operator's tests: the API emulator, the real operator in a thread of its
own, and the S3 store, with the moves the Job controller and the pods would make.

The operator runs exactly as `finetune operator` runs it (finetune_operator.main.operate),
with its own event loop, so the emulator keeps the test's loop. Tests change the world only
through the API and the store, and wait on what the operator writes back, with deadlines.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import kmock

from finetune_core.layout import RunPaths
from finetune_core.lifecycle import StageName, stage_name
from finetune_core.store import ArtifactStore
from finetune_operator.builders import LABEL_JOB, child_labels
from finetune_operator.main import operate
from finetune_operator.metrics import OperatorMetrics
from finetune_operator.settings import OperatorSettings
from tests.integration.operator.emulator import ApiServer
from tests.support import stage_files

T = TypeVar("T")

NAMESPACE = "ml"
FINETUNEJOBS = kmock.resource("finetune.dev", "v1alpha1", "finetunejobs")
JOBS = kmock.resource("batch", "v1", "jobs")
PODS = kmock.resource("", "v1", "pods")
EVENTS = kmock.resource("", "v1", "events")
LEASES = kmock.resource("coordination.k8s.io", "v1", "leases")
TOURNAMENTS = kmock.resource("finetune.dev", "v1alpha1", "finetunetournaments")
FTT_URL = f"/apis/finetune.dev/v1alpha1/namespaces/{NAMESPACE}/finetunetournaments"
FTJ_URL = f"/apis/finetune.dev/v1alpha1/namespaces/{NAMESPACE}/finetunejobs"
JOBS_URL = f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs"
PODS_URL = f"/api/v1/namespaces/{NAMESPACE}/pods"
TIMEOUT = 20.0
# The Job controller stamps startTime when a Job starts; kube-apiserver refuses a finished
# Job without it.
JOB_STARTED = "2025-12-31T23:59:00Z"


def declare_resources(api: ApiServer) -> None:
    """Discovery as on a cluster with the CRD installed (kopf waits for it)."""
    api.resources.load_bundled()
    api.resources[FINETUNEJOBS] = kmock.ResourceInfo(
        kind="FineTuneJob",
        singular="finetunejob",
        namespaced=True,
        verbs={"create", "delete", "get", "list", "patch", "update", "watch"},
        shortnames={"ftj"},
        categories={"finetune"},
        subresources={"status"},
    )
    api.resources[TOURNAMENTS] = kmock.ResourceInfo(
        kind="FineTuneTournament",
        singular="finetunetournament",
        namespaced=True,
        verbs={"create", "delete", "get", "list", "patch", "update", "watch"},
        shortnames={"ftt"},
        categories={"finetune"},
        subresources={"status"},
    )
    # Leader election (finetune_operator.leader).
    api.resources[LEASES] = kmock.ResourceInfo(
        kind="Lease",
        singular="lease",
        namespaced=True,
        verbs={"create", "delete", "get", "list", "patch", "update", "watch"},
    )


def kubeconfig(server: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulator", "cluster": {"server": server}}],
        "users": [{"name": "tester", "user": {}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester"}}],
        "current-context": "emulator",
    }


class OperatorThread:
    """`operate()` in a thread with its own loop; stop() re-raises whatever stopped it."""

    def __init__(self, settings: OperatorSettings, metrics: OperatorMetrics):
        self._settings = settings
        self._metrics = metrics
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="operator", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            asyncio.run(operate(self._settings, metrics=self._metrics, stop_flag=self._stop))
        except BaseException as error:  # reported to the test by stop()
            self.error = error

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.to_thread(self._thread.join, TIMEOUT)
        assert not self._thread.is_alive(), "the operator did not stop"
        if self.error is not None:
            raise self.error


@dataclass
class Cluster:
    api: ApiServer
    store: ArtifactStore
    dataset: str  # the URI of a dataset in the store
    settings: OperatorSettings | None = None  # for an operator in a thread (start_operator)
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    operator: OperatorThread | None = None
    # A real API server applies the CRD's schema: it refuses what the schema forbids.
    validates_schema = False

    # ---------------------------------------------------------------- the operator

    def start_operator(self) -> None:
        assert self.operator is None and self.settings is not None
        self.operator = OperatorThread(self.settings, self.metrics)

    async def stop_operator(self) -> None:
        operator, self.operator = self.operator, None
        if operator is not None:
            await operator.stop()

    async def restart_operator(self) -> None:
        await self.stop_operator()
        self.start_operator()

    # ---------------------------------------------------------------- reading

    def ftj(self, name: str) -> dict[str, Any]:
        return self.api.objects[FINETUNEJOBS, NAMESPACE, name].raw

    def status(self, name: str) -> dict[str, Any]:
        status: dict[str, Any] = self.ftj(name).get("status") or {}
        return status

    def condition(self, name: str, kind: str) -> dict[str, Any]:
        return next(c for c in self.status(name).get("conditions", []) if c["type"] == kind)

    def job(self, name: str) -> dict[str, Any] | None:
        key = (JOBS, NAMESPACE, name)
        if key not in self.api.objects or self.api.objects[key].deleted:
            return None
        return self.api.objects[key].raw

    def jobs(self, owner: str) -> list[dict[str, Any]]:
        """The Jobs labelled finetune.dev/job=<owner> that exist now."""
        return sorted(
            (
                obj.raw
                for (resource, _, _), obj in self.api.objects.items()
                if resource == JOBS
                and not obj.deleted
                and (obj.raw["metadata"].get("labels") or {}).get(LABEL_JOB) == owner
            ),
            key=lambda job: job["metadata"]["name"],
        )

    def job_creations(self, owner: str) -> list[str]:
        """Names of the Jobs the operator asked to create for a FineTuneJob, in order."""
        return [
            request.data["metadata"]["name"]
            for request in self.api.served()
            if request.method == "POST"
            and request.resource == JOBS
            and request.data["metadata"].get("labels", {}).get(LABEL_JOB) == owner
        ]

    def events(self, name: str) -> list[dict[str, Any]]:
        return [
            obj.raw
            for (resource, _, _), obj in self.api.objects.items()
            if resource == EVENTS
            and not obj.deleted
            and obj.raw.get("involvedObject", {}).get("name") == name
        ]

    def event_reasons(self, name: str) -> list[str]:
        return [event["reason"] for event in self.events(name)]

    def run(self, name: str, generation: int = 1) -> RunPaths:
        return RunPaths(NAMESPACE, name, generation)

    async def wait_for(
        self, check: Callable[[], T | Literal[False] | None], what: str, timeout: float = TIMEOUT
    ) -> T:
        """Poll until `check()` is truthy (lookups that fail count as not yet)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                value = check()
            except (KeyError, StopIteration, TypeError):
                value = None
            if value:
                return value
            if self.operator is not None and not self.operator.alive:
                await self.stop_operator()  # raises what stopped it
                raise AssertionError(f"the operator stopped while waiting for {what}")
            if loop.time() > deadline:
                raise AssertionError(f"no {what} within {timeout} s")
            await asyncio.sleep(0.05)

    async def wait_for_phase(self, name: str, phase: str, generation: int = 1) -> dict[str, Any]:
        return await self.wait_for(
            lambda: (
                (s := self.status(name)).get("phase") == phase
                and s.get("observedGeneration") == generation
                and s
            ),
            f"{name} generation {generation} in phase {phase}",
        )

    async def wait_for_job(
        self, name: str, generation: int, stage: StageName, round: int = 1
    ) -> dict[str, Any]:
        job_name = stage_name(name, generation, stage, round)
        return await self.wait_for(lambda: self.job(job_name), f"Job {job_name}")

    # ---------------------------------------------------------------- the API

    async def _request(self, method: str, url: str, body: Any, content_type: str) -> Any:
        response = await self.api.request(
            method, url, json=body, headers={"Content-Type": content_type}
        )
        async with response:
            payload = await response.json()
            assert response.status < 300, f"{method} {url}: {response.status} {payload}"
            return payload

    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        created: dict[str, Any] = await self._request(
            "POST", FTJ_URL, dict(obj), "application/json"
        )
        return created

    async def delete(self, name: str) -> None:
        """Delete a FineTuneJob (the operator's finalizer goes first, as on a cluster)."""
        await self._request("DELETE", f"{FTJ_URL}/{name}", None, "application/json")
        await self.wait_for(lambda: self.absent(name), f"{name} deleted")

    def absent(self, name: str) -> bool:
        key = (FINETUNEJOBS, NAMESPACE, name)
        return key not in self.api.objects or self.api.objects[key].deleted

    async def patch(self, name: str, patch: Mapping[str, Any]) -> None:
        await self._request(
            "PATCH", f"{FTJ_URL}/{name}", dict(patch), "application/merge-patch+json"
        )

    async def patch_status(self, name: str, status: Mapping[str, Any]) -> None:
        await self._patch_status(f"{FTJ_URL}/{name}/status", status)

    async def _patch_status(self, url: str, status: Mapping[str, Any]) -> None:
        """A merge patch of an object's /status subresource."""
        body = {"status": dict(status)}
        await self._request("PATCH", url, body, "application/merge-patch+json")

    # ---------------------------------------------------------------- tournaments

    def ftt(self, name: str) -> dict[str, Any]:
        return self.api.objects[TOURNAMENTS, NAMESPACE, name].raw

    def tournament_status(self, name: str) -> dict[str, Any]:
        status: dict[str, Any] = self.ftt(name).get("status") or {}
        return status

    async def create_tournament(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        created: dict[str, Any] = await self._request(
            "POST", FTT_URL, dict(obj), "application/json"
        )
        return created

    async def patch_tournament(self, name: str, patch: Mapping[str, Any]) -> None:
        await self._request(
            "PATCH", f"{FTT_URL}/{name}", dict(patch), "application/merge-patch+json"
        )

    async def wait_for_tournament(
        self, name: str, phase: str, generation: int = 1, timeout: float = TIMEOUT
    ) -> dict[str, Any]:
        return await self.wait_for(
            lambda: (
                (s := self.tournament_status(name)).get("phase") == phase
                and s.get("observedGeneration") == generation
                and s
            ),
            f"tournament {name} generation {generation} in phase {phase}",
            timeout,
        )

    def finetunejob_creations(self, tournament_label: str) -> list[str]:
        """Names of the FineTuneJobs the operator asked to create for a tournament."""
        return [
            request.data["metadata"]["name"]
            for request in self.api.served()
            if request.method == "POST"
            and request.resource == FINETUNEJOBS
            and request.data["metadata"].get("labels", {}).get("finetune.dev/tournament")
            == tournament_label
        ]

    # ---------------------------------------------------------------- the Job controller

    async def job_status(self, job: str, status: Mapping[str, Any]) -> None:
        await self._patch_status(f"{JOBS_URL}/{job}/status", status)

    async def finish(self, name: str, train: Mapping[str, Any]) -> None:
        """The pods' and the Job controller's part from a running training Job to Promoted."""
        run = self.run(name)
        self.pod_trained(run)
        await self.job_succeeded(train["metadata"]["name"])
        bench = await self.wait_for_job(name, 1, "benchmark")
        self.pod_benchmarked(run)
        await self.job_succeeded(bench["metadata"]["name"])
        await self.wait_for_phase(name, "Promoted")

    async def job_removed(self, job: str) -> None:
        """What the TTL-after-finished controller does once a finished Job's TTL elapsed."""
        await self._request(
            "DELETE",
            f"{JOBS_URL}/{job}",
            {"propagationPolicy": "Background"},
            "application/json",
        )
        await self.wait_for(lambda: self.job(job) is None, f"Job {job} removed")

    async def admit(self, job: str) -> None:
        """What Kueue does when the queue admits a suspended Job."""
        await self._request(
            "PATCH",
            f"{JOBS_URL}/{job}",
            {"spec": {"suspend": False}},
            "application/merge-patch+json",
        )

    async def job_running(self, job: str) -> None:
        await self.job_status(job, {"active": 1, "ready": 1, "startTime": JOB_STARTED})

    async def job_succeeded(self, job: str) -> None:
        """What the Job controller writes when the pod exited 0."""
        now = "2026-01-01T00:00:00Z"
        await self.job_status(
            job,
            {
                "active": 0,
                "ready": 0,
                "succeeded": 1,
                "startTime": JOB_STARTED,
                "completionTime": now,
                "conditions": [
                    {
                        "type": "SuccessCriteriaMet",
                        "status": "True",
                        "reason": "CompletionsReached",
                        "message": "Reached expected number of succeeded pods",
                        "lastTransitionTime": now,
                    },
                    {
                        "type": "Complete",
                        "status": "True",
                        "reason": "CompletionsReached",
                        "message": "Reached expected number of succeeded pods",
                        "lastTransitionTime": now,
                    },
                ],
            },
        )

    async def job_failed(self, job: str, reason: str, message: str) -> None:
        now = "2026-01-01T00:00:00Z"
        await self.job_status(
            job,
            {
                "active": 0,
                "ready": 0,
                "failed": 4,
                "startTime": JOB_STARTED,
                "conditions": [
                    {
                        "type": "FailureTarget",
                        "status": "True",
                        "reason": reason,
                        "message": message,
                        "lastTransitionTime": now,
                    },
                    {
                        "type": "Failed",
                        "status": "True",
                        "reason": reason,
                        "message": message,
                        "lastTransitionTime": now,
                    },
                ],
            },
        )

    async def pod(
        self, owner: str, generation: int, stage: StageName, phase: str, state: dict[str, Any]
    ) -> None:
        """A pod of the stage's Job, created and then given its status (its one container in
        `state`), as the Job controller and the kubelet would."""
        name = f"{stage_name(owner, generation, stage)}-{phase.lower()[:5]}"
        await self._request(
            "POST",
            PODS_URL,
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "labels": child_labels(owner, generation, stage)},
                "spec": {"containers": [{"name": "trainer", "image": "trainer"}]},
            },
            "application/json",
        )
        container = {"name": "trainer", "state": state}
        await self._request(
            "PATCH",
            f"{PODS_URL}/{name}/status",
            {"status": {"phase": phase, "containerStatuses": [container]}},
            "application/merge-patch+json",
        )

    async def failed_pod(self, owner: str, generation: int, stage: StageName, message: str) -> None:
        """A pod whose container exited 1 with a termination message."""
        terminated = {
            "exitCode": 1,
            "reason": "Error",
            "message": message,
            "finishedAt": "2026-01-01T00:00:00Z",
        }
        await self.pod(owner, generation, stage, "Failed", {"terminated": terminated})

    async def waiting_pod(
        self, owner: str, generation: int, stage: StageName, reason: str, message: str
    ) -> None:
        """A pod whose container waits (ImagePullBackOff, ...)."""
        waiting = {"reason": reason, "message": message}
        await self.pod(owner, generation, stage, "Pending", {"waiting": waiting})

    # ---------------------------------------------------------------- the pods' files

    def pod_wrote_progress(self, run: RunPaths, step: int, total: int) -> None:
        stage_files.progress(self.store, run, step, total)

    def pod_trained(self, run: RunPaths, eval_loss: float = 1.21) -> None:
        stage_files.trained(self.store, run, eval_loss)

    def pod_benchmarked(self, run: RunPaths, answer_p95: float = 2.5, round: int = 1) -> None:
        stage_files.benchmarked(self.store, run, answer_p95, round)

    def pod_failed(self, run: RunPaths, stage: str, reason: str, message: str) -> None:
        stage_files.failed(self.store, run, stage, reason, message)
