"""The operator's own Kubernetes API calls: FineTuneJobs and their status, Jobs, pods.

kopf watches; everything else goes through the official client, run in threads so the
event loop never blocks. Both connect with what `load_configuration` finds. Only create,
patch, get, list and delete: no PUT and no server-side apply. Responses are kept as plain
dicts, the same shape kopf hands to handlers.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from finetune_core.api import GROUP, PLURAL, VERSION
from finetune_operator.builders import LABEL_JOB

# (connect, read) seconds for every API call the operator makes itself.
REQUEST_TIMEOUT = (5.0, 30.0)
CONNECTIONS = 48


def load_configuration() -> client.Configuration:
    """Where the API server is and how to authenticate: in a pod its service account, else
    the kubeconfig named by $KUBECONFIG (as set now, not when the client was imported), else
    ~/.kube/config. kopf logs in with the same (finetune_operator.handlers)."""
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        config.load_kube_config(
            config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration
        )
    # As many pooled connections as threads make calls (finetune_operator.main): urllib3
    # would otherwise open, and then discard, a connection for every call beyond the pool.
    configuration.connection_pool_maxsize = CONNECTIONS
    return configuration


MERGE_PATCH = "application/merge-patch+json"
BACKGROUND = {"propagationPolicy": "Background"}
JOBS = "/apis/batch/v1/namespaces/{namespace}/jobs"
PODS = "/api/v1/namespaces/{namespace}/pods"
CUSTOM = f"/apis/{GROUP}/{VERSION}/namespaces/{{namespace}}/{{plural}}"


def send_json(
    api_client: client.ApiClient,
    method: str,
    path: str,
    *,
    params: Mapping[str, str],
    query: Mapping[str, str] | None = None,
    body: Any = None,
    content_type: str = "application/json",
    timeout: float | tuple[float, float],
) -> Any:
    """One request through the official client's connection, credentials and TLS settings,
    its JSON answer read and parsed in the calling thread; ApiException for any status but
    2xx. A path rather than the generated API methods: those convert a body to the client's
    models and back, and check every argument, which cost more CPU than the request itself
    (benchmarks/operator_scale.py). The body is read before the connection goes back to the
    pool, in this thread: a response left unread for the event loop held its connection
    until the loop got round to it, and under load the pool ran dry."""
    headers = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = content_type
    request = api_client.param_serialize(
        method,
        path,
        path_params=dict(params),
        query_params=list((query or {}).items()),
        header_params=headers,
        body=body,
        auth_settings=["BearerToken"],
    )
    response = api_client.call_api(*request, _request_timeout=timeout)
    response.read()
    if not 200 <= response.status <= 299:
        raise ApiException.from_response(http_resp=response, body=None, data=None)
    return json.loads(response.data or b"null")


class NotLeading(RuntimeError):
    """A write refused because this operator no longer leads (its Lease was lost)."""


class Kube:
    """Async wrappers over the blocking client, one call per method."""

    def __init__(self, api_client: client.ApiClient, timeout: float | None = None):
        self._client = api_client
        # Asked right before every write is sent (in the thread that sends it): a reconcile
        # still running when the Lease is lost writes nothing more (finetune_operator.main).
        self.may_write: Callable[[], bool] = lambda: True
        self._timeout = timeout  # per request: a hung connection fails instead of blocking

    @classmethod
    def connect(cls, timeout: float | None = None) -> Kube:
        return cls(client.ApiClient(load_configuration()), timeout)

    def close(self) -> None:
        self._client.close()

    async def _request(
        self, method: str, path: str, params: Mapping[str, str], **kwargs: Any
    ) -> Any:
        """One API call in a thread, bounded in time: a stalled connection is an error the
        reconcile retries, never a reconcile that hangs. A write (anything but GET) is
        refused (NotLeading) once may_write says no, checked in the thread that would send
        it."""
        timeout = REQUEST_TIMEOUT if self._timeout is None else self._timeout

        def send() -> Any:
            if method != "GET" and not self.may_write():
                raise NotLeading("not the leader any more: the write was not sent")
            return send_json(self._client, method, path, params=params, timeout=timeout, **kwargs)

        return await asyncio.to_thread(send)

    async def _get(self, path: str, params: Mapping[str, str]) -> dict[str, Any] | None:
        """An object; None when it does not exist."""
        try:
            obj: dict[str, Any] = await self._request("GET", path, params)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return obj

    async def _list(
        self, path: str, params: Mapping[str, str], labels: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        selector = ",".join(f"{key}={value}" for key, value in labels.items())
        listing = await self._request("GET", path, params, query={"labelSelector": selector})
        items: list[dict[str, Any]] = listing.get("items") or []
        # Selected again here: a server that ignores the selector must not widen the result.
        return [item for item in items if _has_labels(item, labels)]

    async def _create(self, path: str, params: Mapping[str, str], body: Mapping[str, Any]) -> Any:
        """Create an object: the object as created, or None when one of that name exists
        already (not an error). Any other 409 (Conflict) created nothing and is raised."""
        try:
            return await self._request("POST", path, params, body=dict(body))
        except ApiException as error:
            if error.status == 409 and status_reason(error) == "AlreadyExists":
                return None
            raise

    async def _delete(self, path: str, params: Mapping[str, str]) -> None:
        """Delete an object and, in the background, what it owns; an absent one is not an
        error."""
        try:
            await self._request("DELETE", path, params, body=BACKGROUND)
        except ApiException as error:
            if error.status != 404:
                raise

    # ------------------------------------------------------------ any finetune.dev kind

    async def get_custom(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        """A FineTuneJob or FineTuneTournament; None when it does not exist."""
        return await self._get(CUSTOM + "/{name}", _at(namespace, plural=plural, name=name))

    async def get_finetunejob(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self.get_custom(PLURAL, namespace, name)

    async def list_custom(
        self, plural: str, namespace: str, labels: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        return await self._list(CUSTOM, _at(namespace, plural=plural), labels)

    async def create_custom(self, plural: str, body: Mapping[str, Any]) -> bool:
        """Create an object; False when one of that name exists already (not an error)."""
        params = _at(body["metadata"]["namespace"], plural=plural)
        return await self._create(CUSTOM, params, body) is not None

    async def patch_custom(
        self, plural: str, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> None:
        """A JSON merge patch of the object (its metadata and spec)."""
        params = _at(namespace, plural=plural, name=name)
        await self._request(
            "PATCH", CUSTOM + "/{name}", params, body=dict(patch), content_type=MERGE_PATCH
        )

    async def patch_custom_status(
        self, plural: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> dict[str, Any]:
        """A JSON merge patch of .status (null removes a field); the object as patched."""
        patched: dict[str, Any] = await self._request(
            "PATCH",
            CUSTOM + "/{name}/status",
            _at(namespace, plural=plural, name=name),
            body={"status": dict(status)},
            content_type=MERGE_PATCH,
        )
        return patched

    async def patch_finetunejob_status(
        self, namespace: str, name: str, status: Mapping[str, Any]
    ) -> dict[str, Any]:
        return await self.patch_custom_status(PLURAL, namespace, name, status)

    async def delete_custom(self, plural: str, namespace: str, name: str) -> None:
        """Delete an object (its own children go with it); an absent one is not an error."""
        await self._delete(CUSTOM + "/{name}", _at(namespace, plural=plural, name=name))

    # ------------------------------------------------------------ Jobs and pods

    async def list_jobs(self, namespace: str, owner: str) -> list[dict[str, Any]]:
        """The Jobs of one FineTuneJob, every generation (label finetune.dev/job=<owner>)."""
        return await self._list(JOBS, _at(namespace), {LABEL_JOB: owner})

    async def list_pods(self, namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        return await self._list(PODS, _at(namespace), labels)

    async def create_job(self, job: Mapping[str, Any]) -> tuple[bool, dict[str, Any] | None]:
        """Create a Job: (whether this call created it, the Job as the server has it). One
        of that name may exist already (the same run's Job: names are deterministic), which
        is not an error; it is read instead (None if it is gone again)."""
        namespace, name = job["metadata"]["namespace"], job["metadata"]["name"]
        created: dict[str, Any] | None = await self._create(JOBS, _at(namespace), job)
        if created is None:
            return False, await self._get(JOBS + "/{name}", _at(namespace, name=name))
        return True, created

    async def delete_job(self, namespace: str, name: str) -> None:
        """Delete a Job and, in the background, its pods; an absent Job is not an error."""
        await self._delete(JOBS + "/{name}", _at(namespace, name=name))


def _at(namespace: str, **params: str) -> dict[str, str]:
    """A request path's parameters: the namespace and whatever else the path names."""
    return {"namespace": namespace, **params}


def _has_labels(obj: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    present = (obj.get("metadata") or {}).get("labels") or {}
    return all(present.get(key) == value for key, value in labels.items())


def status_reason(error: ApiException) -> str | None:
    """The reason of the API server's Status in an error's body (AlreadyExists, Conflict,
    ...): the HTTP reason phrase alone does not tell an existing object from a conflict."""
    try:
        body = json.loads(error.body or b"null")
    except ValueError:
        return None
    return body.get("reason") if isinstance(body, dict) else None
