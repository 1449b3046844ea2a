"""The test API server behaves like kube-apiserver wherever kopf or the operator depend on it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tests.integration.operator.emulator import ApiServer
from tests.integration.operator.harness import FTJ_URL, JOBS_URL
from tests.support.manifests import finetunejob

MERGE = "application/merge-patch+json"


async def call(
    api: ApiServer, method: str, url: str, body: Any = None, content_type: str = "application/json"
) -> tuple[int, Any]:
    response = await api.request(method, url, json=body, headers={"Content-Type": content_type})
    async with response:
        return response.status, await response.json()


def ftj(name: str) -> dict[str, Any]:
    return finetunejob(name, status={"phase": "Promoted"})


async def test_create_stamps_server_fields_and_conflicts_on_a_second_create(
    api: ApiServer,
) -> None:
    code, created = await call(api, "POST", FTJ_URL, ftj("a"))
    assert code == 200
    meta = created["metadata"]
    assert meta["namespace"] == "ml" and meta["generation"] == 1
    assert meta["uid"] and meta["creationTimestamp"] and meta["resourceVersion"]
    assert "status" not in created  # the status subresource ignores status on create
    code, conflict = await call(api, "POST", FTJ_URL, ftj("a"))
    assert (code, conflict["reason"]) == (409, "AlreadyExists")
    code, event = await call(
        api,
        "POST",
        "/api/v1/namespaces/ml/events",
        {"metadata": {"generateName": "ev-"}, "reason": "X"},
    )
    assert code == 200 and event["metadata"]["name"].startswith("ev-")


async def test_generation_counts_spec_changes_only(api: ApiServer) -> None:
    await call(api, "POST", FTJ_URL, ftj("b"))
    _, labelled = await call(
        api, "PATCH", f"{FTJ_URL}/b", {"metadata": {"labels": {"x": "1"}}}, MERGE
    )
    _, edited = await call(api, "PATCH", f"{FTJ_URL}/b", {"spec": {"lora": {"r": 8}}}, MERGE)
    _, same = await call(api, "PATCH", f"{FTJ_URL}/b", {"spec": {"lora": {"r": 8}}}, MERGE)
    assert labelled["metadata"]["generation"] == 1
    assert edited["metadata"]["generation"] == 2
    assert same["metadata"]["resourceVersion"] == edited["metadata"]["resourceVersion"]


async def test_failed_json_patch_test_is_a_conflict_422(api: ApiServer) -> None:
    _, created = await call(api, "POST", FTJ_URL, ftj("c"))
    stale = str(int(created["metadata"]["resourceVersion"]) - 1)

    def finalize(version: str) -> list[dict[str, Any]]:
        return [
            {"op": "test", "path": "/metadata/resourceVersion", "value": version},
            {"op": "add", "path": "/metadata/finalizers", "value": ["x"]},
        ]

    json_patch = "application/json-patch+json"
    code, _ = await call(api, "PATCH", f"{FTJ_URL}/c", finalize(stale), json_patch)
    assert code == 422
    current = created["metadata"]["resourceVersion"]
    code, patched = await call(api, "PATCH", f"{FTJ_URL}/c", finalize(current), json_patch)
    assert (code, patched["metadata"]["finalizers"]) == (200, ["x"])


async def test_status_subresource_separates_status_from_the_rest(api: ApiServer) -> None:
    await call(api, "POST", FTJ_URL, ftj("d"))
    _, patched = await call(
        api,
        "PATCH",
        f"{FTJ_URL}/d/status",
        {"status": {"phase": "Training"}, "spec": {"x": 1}},
        MERGE,
    )
    assert patched["status"] == {"phase": "Training"} and "x" not in patched["spec"]
    _, ignored = await call(api, "PATCH", f"{FTJ_URL}/d", {"status": {"phase": "Failed"}}, MERGE)
    assert ignored["status"] == {"phase": "Training"}


async def test_lists_select_by_label(api: ApiServer) -> None:
    for name, owner in (("j1", "a"), ("j2", "b")):
        await call(api, "POST", JOBS_URL, {"metadata": {"name": name, "labels": {"own": owner}}})
    _, listing = await call(api, "GET", f"{JOBS_URL}?labelSelector=own%3Db")
    assert [item["metadata"]["name"] for item in listing["items"]] == ["j2"]
    assert int(listing["metadata"]["resourceVersion"]) >= 2


async def test_a_watch_from_a_list_misses_nothing_in_between(api: ApiServer) -> None:
    await call(api, "POST", FTJ_URL, ftj("e"))
    _, listing = await call(api, "GET", FTJ_URL)
    await call(api, "PATCH", f"{FTJ_URL}/e", {"spec": {"lora": {"r": 4}}}, MERGE)
    version = listing["metadata"]["resourceVersion"]
    async with api.get(f"{FTJ_URL}?watch=true&resourceVersion={version}") as stream:
        line = await asyncio.wait_for(stream.content.readline(), 5)
        event = json.loads(line)
        assert event["type"] == "MODIFIED"
        assert event["object"]["spec"]["lora"] == {"r": 4}
        await call(api, "DELETE", f"{FTJ_URL}/e")
        event = json.loads(await asyncio.wait_for(stream.content.readline(), 5))
        assert event["type"] == "DELETED"
