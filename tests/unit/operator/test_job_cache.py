"""The Jobs a reconcile sees come from the watch's index, corrected by the operator's own
creations and deletions until the watch has caught up with them."""

from __future__ import annotations

from typing import Any

from finetune_operator.job_cache import JobCache
from finetune_operator.observe import job_summary

OWNER = ("team", "demo")


def job(name: str, uid: str, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "team", "uid": uid, "labels": {"a": "b"}},
        "spec": {"suspend": False, "template": {"spec": {"containers": [{"name": "x"}]}}},
        "status": status,
    }


def names(jobs: list[Any]) -> list[str]:
    return sorted(j["metadata"]["name"] for j in jobs)


def test_the_watch_index_is_what_a_pass_sees() -> None:
    index = {OWNER: [job("demo-g1-train", "u1")]}
    cache = JobCache()
    cache.use(index)
    assert names(cache.jobs(*OWNER)) == ["demo-g1-train"]
    assert cache.jobs("team", "other") == []
    index[OWNER].append(job("demo-g1-benchmark", "u2"))  # kopf updates its index in place
    assert names(cache.jobs(*OWNER)) == ["demo-g1-benchmark", "demo-g1-train"]


def test_a_created_job_is_seen_before_its_watch_event() -> None:
    index: dict[Any, list[Any]] = {}
    cache = JobCache()
    cache.use(index)
    created = job("demo-g1-train", "u1")
    cache.created(*OWNER, created)
    assert names(cache.jobs(*OWNER)) == ["demo-g1-train"]
    # The watch shows it (newer status): the index's copy is the one seen, once.
    index[OWNER] = [job("demo-g1-train", "u1", ready=1)]
    seen = cache.jobs(*OWNER)
    assert len(seen) == 1 and seen[0]["status"] == {"ready": 1}
    # Gone from the index later (deleted by someone): gone for the pass too.
    index[OWNER] = []
    assert cache.jobs(*OWNER) == []


def test_a_created_job_whose_events_were_merged_into_deleted_is_not_kept() -> None:
    cache = JobCache()
    cache.use({})
    cache.created(*OWNER, job("demo-g1-train", "u1"))
    cache.observed(*OWNER, "u1")
    assert cache.jobs(*OWNER) == []


def test_the_first_event_of_a_created_job_returns_it_as_created_once() -> None:
    """The handler compares the Job as created with its ADDED event: equal, the event tells
    nothing new. A Job this operator did not create (or already seen) returns None."""
    cache = JobCache()
    cache.use({})
    created = job_summary(job("demo-g1-train", "u1"))
    cache.created(*OWNER, created)
    assert cache.observed(*OWNER, "u2") is None
    assert cache.observed(*OWNER, "u1") == created
    assert cache.observed(*OWNER, "u1") is None


def test_a_deleted_job_is_hidden_until_the_watch_drops_it_and_a_namesake_is_not() -> None:
    old = job("demo-g1-train", "u1")
    index = {OWNER: [old]}
    cache = JobCache()
    cache.use(index)
    cache.deleted(*OWNER, old)
    assert cache.jobs(*OWNER) == []
    # Made again under the same name (a new uid) before the watch dropped the old one.
    index[OWNER] = [old, job("demo-g1-train", "u2")]
    assert [j["metadata"]["uid"] for j in cache.jobs(*OWNER)] == ["u2"]
    index[OWNER] = [job("demo-g1-train", "u2")]
    cache.observed(*OWNER, "u1")
    assert [j["metadata"]["uid"] for j in cache.jobs(*OWNER)] == ["u2"]


def test_a_new_index_forgets_what_was_expected_of_the_old_one() -> None:
    cache = JobCache()
    cache.use({})
    cache.created(*OWNER, job("demo-g1-train", "u1"))
    cache.use({})  # kopf started again: its listing has every Job that exists
    assert cache.jobs(*OWNER) == []
    cache.use(None)
    assert not cache.ready


def test_the_summary_keeps_what_observing_reads_and_drops_the_pod_template() -> None:
    full = job("demo-g1-train", "u1", ready=1, startTime="2026-11-26T00:00:00Z")
    full["metadata"]["ownerReferences"] = [{"kind": "FineTuneJob", "uid": "o1"}]
    full["metadata"]["managedFields"] = [{"manager": "kube-controller-manager"}]
    summary = job_summary(full)
    assert summary["spec"] == {"suspend": False}
    assert summary["status"] == full["status"]
    assert summary["metadata"]["ownerReferences"] == [{"kind": "FineTuneJob", "uid": "o1"}]
    assert "managedFields" not in summary["metadata"]
