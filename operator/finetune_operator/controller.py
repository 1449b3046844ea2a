"""Reconciling one FineTuneJob: observe, decide (finetune_operator.reconcile), act, record.

Every kopf handler ends here. One pass reads the object and its Jobs, reads the run files
the current step needs, asks for a decision, carries it out (delete superseded Jobs, write
config.json and create a Job, promote), then merges the status patch and posts the Events.
Actions come before the status that reports them, so a status never claims a Job that was
not created; a pass interrupted anywhere is simply repeated by the next one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import weakref
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from kubernetes.client.exceptions import ApiException
from minio.error import S3Error
from pydantic import BaseModel, ValidationError

from finetune_core.api import BenchmarkReport, Metrics, Progress, ResolvedSpec, RunConfig
from finetune_core.layout import CurrentAlias, ErrorReport, RunPaths
from finetune_core.promotion import PromotionError, promote, read_champion
from finetune_core.store import ArtifactStore, StoreUnavailable, open_store
from finetune_operator.builders import CREDENTIAL_KEYS, build_job, child_labels
from finetune_operator.kube import Kube
from finetune_operator.local_runs import last_checkpoint
from finetune_operator.metrics import OperatorMetrics
from finetune_operator.reconcile import (
    Decision,
    Event,
    Observation,
    decide,
    reads,
    situation,
    termination_message,
)
from finetune_operator.settings import OperatorSettings

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
EventPoster = Callable[[Mapping[str, Any], Event], None]

# A new generation takes two passes (record the new run, then start it); more would mean
# decisions that never settle.
MAX_PASSES = 4


def redact(text: str, secrets: list[str]) -> str:
    """Replace every known credential in a message that came from a pod or the store."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


class Controller:
    """Reconciles FineTuneJobs; one at a time per object, any number in parallel."""

    def __init__(
        self,
        settings: OperatorSettings,
        kube: Kube,
        store: ArtifactStore,
        metrics: OperatorMetrics,
        post_event: EventPoster,
    ):
        self.settings = settings
        self.kube = kube
        self.store = store
        self.metrics = metrics
        self.post_event = post_event
        # The operator's own store credentials: never let one through into a status or Event.
        self._secrets = [value for key in CREDENTIAL_KEYS if (value := os.environ.get(key))]
        self._locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    async def reconcile(self, namespace: str, name: str) -> None:
        """Bring one FineTuneJob as far as its observed state allows."""
        lock = self._locks.setdefault((namespace, name), asyncio.Lock())
        async with lock:
            for _ in range(MAX_PASSES):
                if not await self._pass(namespace, name):
                    return
            log.warning("%s/%s: still changing after %d passes", namespace, name, MAX_PASSES)

    def forget(self, namespace: str, name: str) -> None:
        self.metrics.forget(namespace, name)

    async def _pass(self, namespace: str, name: str) -> bool:
        obj = await self.kube.get_finetunejob(namespace, name)
        if obj is None:
            self.forget(namespace, name)
            return False
        jobs = await self.kube.list_jobs(namespace, name)
        observation = await self._observe(obj, jobs)
        decision = decide(observation, datetime.now(UTC))
        if decision.promote:
            decision = decide(await self._promote(observation), datetime.now(UTC))
        await self._carry_out(obj, observation, decision)
        if decision.status:
            await self.kube.patch_finetunejob_status(namespace, name, decision.status)
        phase = decision.status.get("phase") or situation(obj).phase
        self.metrics.observe(namespace, name, phase, moved="phase" in decision.status)
        for event in decision.events:
            log.log(
                logging.WARNING if event.type == "Warning" else logging.INFO,
                "%s/%s: %s: %s",
                namespace,
                name,
                event.reason,
                event.message,
            )
            self.post_event(obj, event)
        return decision.requeue

    # ---------------------------------------------------------------- observe

    async def _observe(self, obj: Mapping[str, Any], jobs: list[dict[str, Any]]) -> Observation:
        meta = obj["metadata"]
        namespace, name, generation = meta["namespace"], meta["name"], int(meta["generation"])
        paths = RunPaths(namespace, name, generation)
        want = reads(obj, jobs)
        found: dict[str, Any] = {}
        if want.progress:
            found["progress"] = await self._read(paths.progress, Progress)
        if want.metrics:
            found["metrics"] = await self._read(paths.metrics, Metrics)
        if want.report:
            found["report"] = await self._read(paths.benchmark_report, BenchmarkReport)
        if want.error:
            error = await self._read(paths.error, ErrorReport)
            if error is not None:
                found["error"] = error.model_copy(
                    update={"message": redact(error.message, self._secrets)}
                )
        if want.champion is not None:
            found["champion"] = await self._champion(want.champion)
        if want.checkpoints:
            key = await asyncio.to_thread(last_checkpoint, self.store, paths)
            found["last_checkpoint"] = self.store.uri(key) if key else None
        if want.pods_of is not None:
            labels = child_labels(name, generation, want.pods_of)
            message = termination_message(await self.kube.list_pods(namespace, labels))
            found["termination_message"] = message and redact(message, self._secrets)
        if want.dataset is not None:
            found["dataset_missing"] = await self._dataset_missing(want.dataset)
        return Observation(obj=obj, jobs=jobs, run_uri=self.store.uri(paths.prefix), **found)

    async def _read(self, key: str, model: type[M]) -> M | None:
        raw = await asyncio.to_thread(self.store.get_json_or_none, key)
        if raw is None:
            return None
        try:
            return model.model_validate(raw)
        except ValidationError as error:
            log.warning("%s is not a valid %s; ignored: %s", key, model.__name__, error)
            return None

    async def _champion(self, model: str) -> CurrentAlias | None:
        try:
            return await asyncio.to_thread(read_champion, self.store, model)
        except PromotionError as error:
            log.warning("the current model alias is unreadable; gating without it: %s", error)
            return None

    async def _dataset_missing(self, uri: str) -> bool:
        """Whether an s3:// dataset is certainly absent; when the check itself fails, let
        the training pod find out and report it."""
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        try:
            datasets = open_store(f"s3://{bucket}", self.settings.s3_endpoint)
            return not await asyncio.to_thread(datasets.exists, key)
        except (S3Error, StoreUnavailable) as error:
            log.warning(
                "could not check that %s exists: %s", uri, redact(str(error), self._secrets)
            )
            return False

    async def _promote(self, observation: Observation) -> Observation:
        s = situation(observation.obj, observation.jobs)
        try:
            uri = await asyncio.to_thread(
                promote, self.store, s.paths, s.resolved, datetime.now(UTC)
            )
        except PromotionError as error:
            return replace(observation, promotion_error=str(error))
        return replace(observation, promoted_uri=uri)

    # ---------------------------------------------------------------- act

    async def _carry_out(
        self, obj: Mapping[str, Any], observation: Observation, decision: Decision
    ) -> None:
        namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        for job in decision.delete:
            try:
                await self.kube.delete_job(namespace, job)
                log.info("%s/%s: deleted Job %s of a superseded generation", namespace, name, job)
            except ApiException as error:  # e.g. no RBAC to delete: it runs to its end
                log.warning(
                    "%s/%s: could not delete Job %s: %s", namespace, name, job, error.reason
                )
        if decision.create is None:
            return
        s = situation(obj)
        assert s.spec is not None
        if decision.create == "train":
            await self._write_config(s.paths, s.resolved)
        manifest = build_job(
            decision.create,
            name=name,
            namespace=namespace,
            generation=s.generation,
            uid=obj["metadata"].get("uid"),
            spec=s.spec,
            settings=self.settings,
            run_uri=observation.run_uri,
        )
        created = await self.kube.create_job(manifest)
        log.info(
            "%s/%s: %s Job %s",
            namespace,
            name,
            "created" if created else "found existing",
            manifest["metadata"]["name"],
        )

    async def _write_config(self, paths: RunPaths, spec: ResolvedSpec) -> None:
        """config.json tells the pods what to run; a run's config is written once."""
        if await asyncio.to_thread(self.store.exists, paths.config):
            return
        config = RunConfig(
            namespace=paths.namespace,
            name=paths.name,
            generation=paths.generation,
            spec=spec,
            created_at=datetime.now(UTC),
        )
        await asyncio.to_thread(self.store.put_json, paths.config, config.to_wire())
