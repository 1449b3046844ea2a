"""Reconciling one FineTuneJob: observe, decide (finetune_core.lifecycle), act, record.

Every kopf handler ends here. One pass reads the object and its Jobs, reads the run files
the current step needs, asks the lifecycle for a decision, carries it out (delete
superseded Jobs, write config.json and create a Job, promote), then merges the status patch
and posts the Events. Actions come before the status that reports them, so a status never
claims a Job that was not created; a pass interrupted anywhere is simply repeated by the
next one.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from kubernetes.client.exceptions import ApiException

from finetune_core.api import ResolvedSpec
from finetune_core.layout import RunPaths, alias_of
from finetune_core.lifecycle import (
    STAGES,
    Decision,
    Event,
    Observation,
    Prune,
    RunState,
    decide,
    merge_diff,
    merge_patch,
    reads,
    retrying,
)
from finetune_core.manifest import parse_manifest
from finetune_core.promotion import (
    AliasContended,
    ChampionChanged,
    PromotionError,
    move_alias,
    stage_promotion,
)
from finetune_core.retention import prune_runs
from finetune_core.run_files import claim_run_directory, read_run_files, run_owner
from finetune_core.runs import new_run_config
from finetune_core.store import ArtifactStore
from finetune_operator import polling
from finetune_operator.builders import CREDENTIAL_KEYS, build_job, child_labels
from finetune_operator.job_cache import JobCache
from finetune_operator.keyed_locks import KeyedLocks
from finetune_operator.known_datasets import KnownDatasets
from finetune_operator.kube import Kube, NotLeading
from finetune_operator.latest_bodies import LatestBodies
from finetune_operator.metrics import OperatorMetrics
from finetune_operator.observe import (
    job_summary,
    may_be_stuck,
    run_state,
    stuck,
    termination_message,
)
from finetune_operator.polling import Schedule
from finetune_operator.settings import OperatorSettings
from finetune_operator.work_slots import WorkSlots

log = logging.getLogger(__name__)

EventPoster = Callable[[Mapping[str, Any], Event], None]

# Faults in a row before the Reconciling condition shows the one being retried.
SHOW_FAULTS_AFTER = 3
# A new generation takes two passes (record the new run, then start it), three when its Job
# waits in a queue (then say so); more would mean decisions that never settle.
MAX_PASSES = 4
# Threads of their own for moving aliases (a read and a conditional write each): a move
# holds its alias's lock, and queued behind a burst's calls in the shared pool, every
# promotion of that alias would wait for the ones before it to find a thread.
ALIAS_THREADS = 4


def redact(text: str, secrets: list[str]) -> str:
    """Replace every known credential in a message that came from a pod or the store."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def refused_for_good(error: ApiException) -> bool:
    """A 4xx other than a conflict or throttling: the same request will be refused again."""
    return 400 <= (error.status or 0) < 500 and error.status not in (409, 429)


def api_message(error: ApiException) -> str:
    """The API server's own explanation (its Status message), else the HTTP reason."""
    try:
        message = str(json.loads(error.body or "{}").get("message") or "")
    except ValueError:
        message = ""
    return (
        f"{error.status} {error.reason}: {message}" if message else f"{error.status} {error.reason}"
    )


@dataclass(frozen=True)
class Unwritten:
    """What a reconcile's earlier passes decided but left to a later pass to write: the
    status as the API server has it (the patch is the difference from it), the Events and the
    phases it moved through (for the metrics)."""

    base: Mapping[str, Any]
    events: tuple[Event, ...]
    moved: tuple[str, ...]  # the phases moved into


class Controller:
    """Reconciles FineTuneJobs; one at a time per object, any number in parallel."""

    def __init__(
        self,
        settings: OperatorSettings,
        kube: Kube,
        store: ArtifactStore,
        metrics: OperatorMetrics,
        post_event: EventPoster,
        slots: int,
    ):
        self.settings = settings
        self.kube = kube
        self.store = store
        self.metrics = metrics
        self.post_event = post_event
        # The operator's own store credentials: never let one through into a status or Event.
        self._secrets = [value for key in CREDENTIAL_KEYS if (value := os.environ.get(key))]
        self._objects = KeyedLocks()  # one reconcile of an object at a time
        # `slots` reconciles at work at once (finetune_operator.work_slots): one per thread
        # of the pool their blocking calls run in.
        self._slots = WorkSlots(slots)
        self._aliases = KeyedLocks()  # one alias moved at a time
        self._alias_threads = concurrent.futures.ThreadPoolExecutor(
            ALIAS_THREADS, thread_name_prefix="alias"
        )
        self._failures: dict[tuple[str, str], int] = {}
        # The objects whose run moves on without an event: polled (finetune_operator.polling).
        self.schedule = Schedule(settings.progress_interval_seconds)
        self._poller: asyncio.Task[None] | None = None
        # The resourceVersion of each object as this operator's last status patches left it:
        # the watch events they cause tell nothing new.
        self._written: dict[tuple[str, str], collections.deque[str]] = {}
        # The newest version of each object known, from its watch and these patches.
        self._latest = LatestBodies()
        # Run directories known to hold this object's own config.json (run prefix, uid): a
        # config is written once, so it need not be read again on every pass.
        self._own_runs: set[tuple[str, str]] = set()
        self._datasets = KnownDatasets()  # found a moment ago: not looked up again
        # Each object's Jobs as the watch saw them (kopf's index, given by the handlers).
        self.jobs = JobCache()

    def start_polling(self) -> None:
        """Poll the runs in progress (finetune_operator.polling), unless it runs already.
        Called from kopf's handlers: the poll's task inherits their context, where kopf
        keeps the queue the Events of a reconcile are posted through (a task started
        anywhere else would have its Events fail)."""
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(polling.poll(self.schedule, self.reconcile))

    async def stop_polling(self) -> None:
        """Stop the poll; the next start begins with an empty schedule (kopf's listing of
        the FineTuneJobs fills it again)."""
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
            self._poller = None
        self.schedule.clear()
        self.jobs.use(None)
        self._latest.clear()

    def own_write(self, namespace: str, name: str, version: str | None) -> bool:
        """Whether an object at `version` is just what this operator's last status patch
        made of it (its watch event then asks for nothing)."""
        return version is not None and version in self._written.get((namespace, name), ())

    def seen(self, namespace: str, name: str, body: Mapping[str, Any], listed: bool) -> None:
        """A watch event's body (`listed`: from a listing), so that the next reconcile of
        the object need not read it (finetune_operator.latest_bodies)."""
        self._latest.seen((namespace, name), body, listed)

    async def reconcile(self, namespace: str, name: str) -> None:
        """Bring one FineTuneJob as far as its observed state allows; keep it on the poll
        schedule while its run can move on without an event, or when this failed. The
        object as its watch and this operator's writes last showed it, or read when
        neither has."""
        key = (namespace, name)
        # The object's lock first: waiting for another reconcile of it holds no slot.
        # The first reconcile of an object new to this operator goes before the others.
        urgent = key not in self._written
        async with self._objects.hold(key), self._slots.held(urgent):
            obj = self._latest.get(key)
            unwritten = None
            try:
                for left in reversed(range(MAX_PASSES)):
                    requeue, obj, unwritten = await self._pass(
                        namespace, name, obj, unwritten, may_defer=left > 0
                    )
                    if not requeue:
                        break
                else:
                    log.warning(
                        "%s/%s: still changing after %d passes", namespace, name, MAX_PASSES
                    )
            except NotLeading:
                raise  # the Lease was lost: the next leader takes the object over
            except Exception as error:
                # Polled again within one interval: the back-off of a failed reconcile.
                self.schedule.keep(key, asyncio.get_running_loop().time())
                await self._transient(namespace, name, error)
                raise
            self._failures.pop(key, None)
            interval = None if obj is None else self._poll_interval(obj)
            if interval is None:
                self.schedule.drop(key)
            else:
                self.schedule.keep(key, asyncio.get_running_loop().time(), interval)

    def _poll_interval(self, obj: Mapping[str, Any]) -> float | None:
        """How often the object is polled now (polling.poll_interval), its Jobs as the
        watch shows them. Without the watch's cache yet, no Jobs: an unsettled run is then
        polled every progress interval."""
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        jobs = self.jobs.jobs(*key) if self.jobs.ready else ()
        return polling.poll_interval(
            run_state(obj, jobs, self.settings),
            self.settings.progress_interval_seconds,
            self.settings.stuck_pod_seconds,
        )

    async def _transient(self, namespace: str, name: str, error: Exception) -> None:
        """Count a fault the next pass may not meet; from the SHOW_FAULTS_AFTER-th in a row,
        say in the Reconciling condition what is being retried (best effort: the API server
        may be what fails)."""
        key = (namespace, name)
        self._failures[key] = count = self._failures.get(key, 0) + 1
        if count < SHOW_FAULTS_AFTER:
            return
        detail = redact(f"{type(error).__name__}: {error}", self._secrets)
        message = f"retrying after {count} failed attempts; the last: {detail}"
        try:
            obj = await self.kube.get_finetunejob(namespace, name)
            if obj is None:
                return
            decision = retrying(run_state(obj, (), self.settings), datetime.now(UTC), message)
            if decision.status:
                await self.kube.patch_finetunejob_status(namespace, name, decision.status)
        except Exception as also:
            log.warning("%s/%s: could not record the retry: %s", namespace, name, also)

    def forget(self, namespace: str, name: str) -> None:
        self.metrics.forget(namespace, name)
        self.schedule.drop((namespace, name))
        self._written.pop((namespace, name), None)
        self._latest.forget((namespace, name))
        self.jobs.forget(namespace, name)

    async def _pass(
        self,
        namespace: str,
        name: str,
        known: dict[str, Any] | None,
        unwritten: Unwritten | None,
        may_defer: bool,
    ) -> tuple[bool, dict[str, Any] | None, Unwritten | None]:
        """One pass: (whether another should follow, the object as this pass left it, what
        it left for the next pass to write). `known` is the object as the previous pass of
        this reconcile left it (the API's answer to its patch, or the object with the
        status it did not write yet), so no read is needed for it; None: read it.
        `unwritten`: what earlier passes left to write, written with this pass's status."""
        obj = known
        if obj is None:
            obj = await self.kube.get_finetunejob(namespace, name)
            if obj is None:
                self.forget(namespace, name)
                return False, None, None
            self._latest.seen((namespace, name), obj, listed=True)  # as it is now
        jobs = await self._jobs(namespace, name)
        state = await self._unstick(run_state(obj, jobs, self.settings), jobs)
        observation = await self._observe(state)
        decision = decide(observation, datetime.now(UTC))
        if decision.promote:
            decision = decide(await self._promote(observation), datetime.now(UTC))
        try:
            # A Job created suspended waits for its queue: the next pass says so.
            queued = await self._carry_out(obj, observation.state, decision, jobs)
        except ApiException as error:
            if not refused_for_good(error):
                raise  # a server error or a timeout: kopf retries the reconcile with back-off
            refused = replace(observation, create_refused=api_message(error))
            decision = decide(refused, datetime.now(UTC))
            queued = False
        status = merge_patch(obj.get("status") or {}, decision.status)
        events = (unwritten.events if unwritten else ()) + decision.events
        base = unwritten.base if unwritten else obj.get("status") or {}
        moved = (unwritten.moved if unwritten else ()) + (
            (decision.status["phase"],) if "phase" in decision.status else ()
        )
        if may_defer and decision.requeue and not decision.acts:
            # A pass that only records a step (a new run's Validating): its status and
            # Events are written with the next pass's, one patch instead of two.
            return True, {**obj, "status": status}, Unwritten(base, events, moved)
        patch = merge_diff(base, status) if unwritten else decision.status
        if patch:
            obj = await self._write_status(namespace, name, patch)
        if decision.prune is not None:
            await self._prune(observation.state, decision.prune)
        # The phases this reconcile moved through are counted once written.
        self.metrics.observe(namespace, name, status.get("phase") or observation.state.phase, moved)
        self._announce(obj, events)
        return decision.requeue or queued, obj, None

    async def _write_status(
        self, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Patch the status; the object as patched."""
        patched = await self.kube.patch_finetunejob_status(namespace, name, patch)
        self._latest.written((namespace, name), patched)
        if version := (patched.get("metadata") or {}).get("resourceVersion"):
            # Several: the events of a reconcile's passes arrive after all of them.
            written = self._written.setdefault((namespace, name), collections.deque(maxlen=4))
            written.append(version)
        return patched

    def _announce(self, obj: Mapping[str, Any], events: tuple[Event, ...]) -> None:
        """Log the Events and post them on the object."""
        meta = obj.get("metadata") or {}
        for event in events:
            log.log(
                logging.WARNING if event.type == "Warning" else logging.INFO,
                "%s/%s: %s: %s",
                meta.get("namespace"),
                meta.get("name"),
                event.reason,
                event.message,
            )
            self.post_event(obj, event)

    # ---------------------------------------------------------------- observe

    async def _jobs(self, namespace: str, name: str) -> Sequence[Mapping[str, Any]]:
        """The object's Jobs: from the watch's cache, or listed where there is none."""
        if self.jobs.ready:
            return self.jobs.jobs(namespace, name)
        return await self.kube.list_jobs(namespace, name)

    async def _observe(self, state: RunState) -> Observation:
        want = reads(state)
        if want.dataset is not None and self._datasets.known(want.dataset):
            want = replace(want, dataset=None)
        paths = state.paths
        own = (paths.prefix, state.uid or "") in self._own_runs
        run_files = want.progress or want.metrics or want.report or want.error
        # Whose run directory it is, read once: from then on it is known to be this object's.
        if (
            not own
            and state.uid
            and (run_files or want.checkpoints)
            and await asyncio.to_thread(run_owner, self.store, paths) == state.uid
        ):
            self._own_runs.add((paths.prefix, state.uid))
            own = True
        files = await asyncio.to_thread(
            read_run_files,
            self.store,
            paths,
            want,
            self.settings.s3_endpoint,
            None if own else state.uid,
        )
        if want.dataset is not None and not files.dataset_missing:
            self._datasets.found(want.dataset)
        if files.error is not None:
            error = files.error.model_copy(
                update={"message": redact(files.error.message, self._secrets)}
            )
            files = replace(files, error=error)
        message = None
        if want.failed_stage is not None:
            labels = child_labels(state.name, state.generation, want.failed_stage)
            message = termination_message(await self.kube.list_pods(state.namespace, labels))
        return Observation(
            state=state,
            run_uri=self.store.uri(paths.prefix),
            files=files,
            stage_message=message and redact(message, self._secrets),
        )

    async def _unstick(self, state: RunState, jobs: Sequence[Mapping[str, Any]]) -> RunState:
        """A stage whose pod cannot start (no image, unschedulable, no pod at all) for longer
        than the operator allows is a failed stage, not one to wait for forever."""
        for stage in STAGES:
            current = state.stage(stage)
            if current is None or current.outcome != "running" or current.ready:
                continue
            if current.queue is not None:
                continue  # suspended by design until its queue admits it
            job = next(j for j in jobs if j["metadata"]["name"] == current.name)
            now, limit = datetime.now(UTC), self.settings.stuck_pod_seconds
            if not may_be_stuck(job, now, limit):
                continue  # its pods are younger than the Job: none can have waited that long
            labels = child_labels(state.name, state.generation, stage)
            pods = await self.kube.list_pods(state.namespace, labels)
            found = stuck(job, pods, now, limit)
            if found is not None:
                state = state.with_stage(stage, found)
        return state

    async def _promote(self, observation: Observation) -> Observation:
        s = observation.state
        try:
            staged = await asyncio.to_thread(stage_promotion, self.store, s.paths, s.resolved)
            # The alias moves one promotion at a time: wait for it without a slot.
            async with self._slots.given_up(), self._aliases.hold(staged.alias.current):
                uri = await asyncio.get_running_loop().run_in_executor(
                    self._alias_threads,
                    move_alias,
                    self.store,
                    staged,
                    s.resolved,
                    datetime.now(UTC),
                )
        except ChampionChanged as lost:
            return replace(observation, promotion_rejected=lost.verdict)
        except AliasContended:
            raise  # the reconcile fails and the poll tries again (finetune_operator.polling)
        except PromotionError as error:
            return replace(observation, promotion_error=str(error))
        return replace(observation, promoted_uri=uri)

    # ---------------------------------------------------------------- act

    async def _carry_out(
        self,
        obj: Mapping[str, Any],
        s: RunState,
        decision: Decision,
        jobs: Sequence[Mapping[str, Any]],
    ) -> bool:
        """Whether a Job was created suspended (it waits for its Kueue queue)."""
        by_name = {job["metadata"]["name"]: job for job in jobs}
        for job in decision.delete:
            try:
                await self.kube.delete_job(s.namespace, job)
                if job in by_name:
                    self.jobs.deleted(s.namespace, s.name, by_name[job])
                log.info(
                    "%s/%s: deleted Job %s of a superseded generation", s.namespace, s.name, job
                )
            except ApiException as error:  # e.g. no RBAC to delete: it runs to its end
                log.warning(
                    "%s/%s: could not delete Job %s: %s", s.namespace, s.name, job, error.reason
                )
        if decision.create is None:
            return False
        # An error.json of an earlier try explains nothing about this one; a fresh run
        # directory has none.
        fresh = decision.create == "train" and await self._claim_run(s.paths, s.resolved, s.uid)
        if not fresh:
            await asyncio.to_thread(self.store.delete, s.paths.error)
        manifest = build_job(
            decision.create,
            name=s.name,
            namespace=s.namespace,
            generation=s.generation,
            uid=s.uid,
            spec=parse_manifest(obj).spec,
            settings=self.settings,
            run_uri=self.store.uri(s.paths.prefix),
            round=decision.round,
        )
        created, body = await self.kube.create_job(manifest)
        if body is not None:
            self.jobs.created(s.namespace, s.name, job_summary(body))
        log.info(
            "%s/%s: %s Job %s",
            s.namespace,
            s.name,
            "created" if created else "found existing",
            manifest["metadata"]["name"],
        )
        return bool(manifest["spec"].get("suspend"))

    async def _prune(self, s: RunState, prune: Prune) -> None:
        """Retention, once the run settled: best effort (a store fault only logs; the next
        run that settles tries again)."""
        try:
            alias = alias_of(s.resolved, s.namespace)
            await asyncio.to_thread(prune_runs, self.store, s.paths, alias, prune)
        except Exception as error:
            log.warning("%s/%s: could not prune run directories: %s", s.namespace, s.name, error)

    async def _claim_run(self, paths: RunPaths, spec: ResolvedSpec, uid: str | None) -> bool:
        """config.json tells the pods what to run; a run's config is written once, by the
        object the run belongs to (run_files.claim_run_directory). Whether it is fresh."""
        config = new_run_config(paths, uid, spec)
        fresh = await asyncio.to_thread(claim_run_directory, self.store, paths, config)
        # Moved aside if it was another's, so it is this object's now and stays so.
        self._own_runs.add((paths.prefix, uid or ""))
        return fresh
