"""What the Kubernetes objects say, in the lifecycle's terms: a FineTuneJob and its Jobs as a
`lifecycle.RunState`, a Job's conditions as a `StageState`, pods' termination messages as a
failed stage's last words. Pure functions of the objects as read from the API."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from finetune_core.api import DATASET_SCHEMES, KIND, FineTuneJobSpec, Reason
from finetune_core.cost import Price
from finetune_core.lifecycle import (
    APPROVE_ANNOTATION,
    REBENCHMARK_ANNOTATION,
    RunState,
    StageState,
    parse_status,
    stage_name,
)
from finetune_core.manifest import InvalidManifest, Problem, parse_manifest
from finetune_operator.builders import LABEL_KUEUE_QUEUE, LABEL_MANAGED_BY, MANAGED_BY
from finetune_operator.settings import OperatorSettings

JOB_METADATA = ("name", "namespace", "uid", "labels", "ownerReferences", "creationTimestamp")


def job_summary(job: Mapping[str, Any]) -> dict[str, Any]:
    """What this module reads of a Job (its name, labels, owner, creation time, whether it is
    suspended, its status): what the operator keeps of each Job it watches, without the pod
    template that makes up most of a Job."""
    meta = job.get("metadata") or {}
    return {
        "metadata": {key: meta[key] for key in JOB_METADATA if key in meta},
        "spec": {"suspend": (job.get("spec") or {}).get("suspend")},
        "status": dict(job.get("status") or {}),
    }


def stage_state(job: Mapping[str, Any]) -> StageState:
    """A Job's outcome from its conditions, as the Job controller sets them, and when it
    started and ended (its startTime, and its completionTime or the Failed condition's time)."""
    status = job.get("status") or {}
    true = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
    name = job["metadata"]["name"]
    started = status.get("startTime")
    if "Complete" in true:
        ended = status.get("completionTime") or true["Complete"].get("lastTransitionTime")
        return StageState(name, "succeeded", started_at=started, finished_at=ended)
    if "Failed" in true:
        failed = true["Failed"]
        return StageState(
            name,
            "failed",
            reason=failed.get("reason") or Reason.JOB_FAILED,
            message=failed.get("message") or "",
            started_at=started,
            finished_at=failed.get("lastTransitionTime"),
        )
    if (job.get("spec") or {}).get("suspend"):
        queue = ((job["metadata"].get("labels") or {}).get(LABEL_KUEUE_QUEUE)) or ""
        return StageState(name, "running", queue=queue or "(none)")
    return StageState(name, "running", ready=(status.get("ready") or 0) > 0, started_at=started)


def cluster_problems(spec: FineTuneJobSpec, settings: OperatorSettings) -> list[Problem]:
    """What a cluster refuses that `finetune run` accepts: manifest-relative paths (a pod
    reads URIs only), and tolerations the operator does not allow (a job author must not
    place pods on any tainted node)."""
    problems = [
        Problem(
            f"spec.resources.tolerations[{index}]",
            "not allowed by the operator (ask its administrator to add it to "
            "FINETUNE_ALLOWED_TOLERATIONS)",
        )
        for index, toleration in enumerate(spec.resources.tolerations or [])
        if not settings.toleration_allowed(toleration.to_wire())
    ]
    uris = [("spec.dataset.uri", spec.dataset.uri)] + [
        (f"spec.benchmark.sla[{index}].prompts", profile.prompts)
        for index, profile in enumerate(spec.benchmark.sla)
        if profile.prompts is not None
    ]
    return problems + [
        Problem(
            path,
            "must be an s3:// or file:// URI in a cluster (relative paths work only "
            "with `finetune run`)",
        )
        for path, uri in uris
        if not uri.startswith(DATASET_SCHEMES)
    ]


def run_state(
    obj: Mapping[str, Any],
    jobs: Sequence[Mapping[str, Any]] = (),
    settings: OperatorSettings | None = None,
) -> RunState:
    """Interpret a FineTuneJob (as read from the API) and the Jobs labelled with its name."""
    settings = settings or OperatorSettings()
    meta = obj.get("metadata") or {}
    name, generation = meta.get("name", ""), int(meta.get("generation") or 1)
    spec, problems = None, []
    try:
        spec = parse_manifest(obj).spec
        problems = cluster_problems(spec, settings)
    except InvalidManifest as invalid:
        problems = invalid.problems
    resolved = spec.resolve() if spec is not None and not problems else None
    uid = meta.get("uid")
    ours, leftovers = owned_jobs(jobs, uid)
    states = {job["metadata"]["name"]: stage_state(job) for job in ours}
    raw_status = obj.get("status") or {}
    recorded = parse_status(raw_status)
    # The benchmark stage of this run is the current round's (1, or a re-benchmark's).
    round = (recorded.benchmark_round or 1) if recorded.observed_generation == generation else 1
    train_name = stage_name(name, generation, "train")
    bench_name = stage_name(name, generation, "benchmark", round)
    superseded = tuple(
        sorted(
            job_name
            for job_name, state in states.items()
            if job_name not in (train_name, bench_name) and state.outcome == "running"
        )
    )
    return RunState(
        namespace=meta.get("namespace", ""),
        name=name,
        generation=generation,
        spec=resolved,
        gpus=spec.resources.gpus if spec is not None else 0,
        problems=tuple(problems),
        raw_status=raw_status,
        approval=(meta.get("annotations") or {}).get(APPROVE_ANNOTATION),
        rebenchmark=(meta.get("annotations") or {}).get(REBENCHMARK_ANNOTATION),
        deleting=bool(meta.get("deletionTimestamp")),
        train=states.get(train_name),
        bench=states.get(bench_name),
        superseded=superseded,
        leftovers=tuple(sorted(job["metadata"]["name"] for job in leftovers)),
        uid=uid,
        gpu_capacity_gib=settings.gpu_memory_gib if spec and spec.resources.gpus else None,
        price=Price(settings.gpu_hour_price, settings.currency),
        keep_generations=settings.keep_generations,
    )


def owned_jobs(
    jobs: Sequence[Mapping[str, Any]], uid: str | None
) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
    """(this object's Jobs, a deleted predecessor's) among the Jobs labelled with its name.
    Only Jobs the operator made count (the managed-by label and a FineTuneJob owner); a Job
    a user merely labelled is neither adopted nor deleted."""
    ours: list[Mapping[str, Any]] = []
    leftovers: list[Mapping[str, Any]] = []
    for job in jobs:
        meta = job.get("metadata") or {}
        if (meta.get("labels") or {}).get(LABEL_MANAGED_BY) != MANAGED_BY:
            continue
        owners = [ref for ref in meta.get("ownerReferences") or [] if ref.get("kind") == KIND]
        if not owners:
            continue
        (ours if uid is None or owners[0].get("uid") == uid else leftovers).append(job)
    return ours, leftovers


def settled(obj: Mapping[str, Any]) -> bool:
    """Nothing can change without a new event (spec edit, annotation): no need to poll."""
    return run_state(obj).settled


STUCK_WAITING = frozenset(
    {"ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError", "InvalidImageName"}
)


def may_be_stuck(job: Mapping[str, Any], now: datetime, limit: float) -> bool:
    """Whether a running Job is old enough that its pods may have waited `limit` seconds;
    a younger one need not have its pods read (they were all created after it)."""
    created = _moment(job["metadata"].get("creationTimestamp"))
    return created is None or (now - created).total_seconds() > limit


def stuck(
    job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], now: datetime, limit: float
) -> StageState | None:
    """A running Job that cannot start, as a failed stage: a pod waiting for an image or its
    configuration, or unschedulable, for longer than `limit` seconds; or no pod at all that
    long (the Job controller cannot create one: quota)."""
    name = job["metadata"]["name"]
    if not pods:
        created = _moment(job["metadata"].get("creationTimestamp"))
        if created is not None and (now - created).total_seconds() > limit:
            message = (
                f"Job {name} has had no pod for {limit:.0f} s (a quota or admission refusing "
                "it? see its Events)"
            )
            return StageState(name, "failed", reason="FailedCreate", message=message, stuck=True)
        return None
    for pod in pods:
        since, reason, message = _waiting(pod)
        if since is not None and (now - since).total_seconds() > limit:
            where = f"pod {pod['metadata']['name']}: {message}"
            return StageState(name, "failed", reason=reason, message=where, stuck=True)
    return None


def _waiting(pod: Mapping[str, Any]) -> tuple[datetime | None, str, str]:
    """Since when, why and what a pod is stuck on; (None, ...) when it is not."""
    status = pod.get("status") or {}
    created = _moment((pod.get("metadata") or {}).get("creationTimestamp"))
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("reason") == "Unschedulable":
            since = _moment(condition.get("lastTransitionTime")) or created
            return since, "Unschedulable", condition.get("message") or "unschedulable"
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in STUCK_WAITING:
            reason = waiting["reason"]
            return created, reason, waiting.get("message") or reason
    return None, "", ""


def _moment(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def termination_message(pods: Sequence[Mapping[str, Any]]) -> str | None:
    """Why the newest failed container of a Job's pods stopped: its termination message
    (the error, or the log tail with FallbackToLogsOnError), else its reason and code."""
    found: list[tuple[str, str]] = []
    for pod in pods:
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            for state in (container.get("state"), container.get("lastState")):
                terminated = (state or {}).get("terminated")
                if not terminated or not terminated.get("exitCode"):
                    continue
                message = (terminated.get("message") or "").strip() or (
                    f"container {terminated.get('reason') or 'terminated'} "
                    f"(exit code {terminated['exitCode']})"
                )
                found.append((terminated.get("finishedAt") or "", message))
    return max(found)[1] if found else None
