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
from typing import Any, TypeVar

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from finetune_core.api import GROUP, PLURAL, VERSION
from finetune_operator.builders import LABEL_JOB

T = TypeVar("T")

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


async def call_json(
    call: Callable[..., Any], *args: Any, timeout: float | tuple[float, float], **kwargs: Any
) -> Any:
    """A call of the official client in a thread, its response body read and parsed as JSON
    in that thread too. The connection goes back to the pool only once the body is read: a
    response handed to the event loop unread held its connection until the loop got round
    to it, so under load the pool ran dry and every further call opened (and then threw
    away) a new TLS connection."""

    def send() -> Any:
        response = call(*args, _preload_content=False, _request_timeout=timeout, **kwargs)
        return json.loads(response.data or b"null")

    return await asyncio.to_thread(send)


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
        self._batch = client.BatchV1Api(api_client)
        self._core = client.CoreV1Api(api_client)
        self._custom = client.CustomObjectsApi(api_client)

    @classmethod
    def connect(cls, timeout: float | None = None) -> Kube:
        return cls(client.ApiClient(load_configuration()), timeout)

    def close(self) -> None:
        self._client.close()

    async def _call(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """One API call in a thread, bounded in time: a stalled connection is an error the
        reconcile retries, never a reconcile that hangs."""
        timeout = REQUEST_TIMEOUT if self._timeout is None else self._timeout
        return await call_json(call, *args, timeout=timeout, **kwargs)

    async def _write(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """_call for a create, patch or delete: refused (NotLeading) once may_write says no."""

        def send(*args: Any, **kwargs: Any) -> Any:
            if not self.may_write():
                raise NotLeading("not the leader any more: the write was not sent")
            return call(*args, **kwargs)

        return await self._call(send, *args, **kwargs)

    async def get_finetunejob(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = await self._call(
                self._custom.get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return obj

    async def patch_finetunejob_status(
        self, namespace: str, name: str, status: Mapping[str, Any]
    ) -> dict[str, Any]:
        """A JSON merge patch of .status (null removes a field); the object as patched."""
        patched: dict[str, Any] = await self._write(
            self._custom.patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            {"status": dict(status)},
        )
        return patched

    # ------------------------------------------------------------ any finetune.dev kind

    async def get_custom(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        """A FineTuneJob or FineTuneTournament; None when it does not exist."""
        try:
            obj: dict[str, Any] = await self._call(
                self._custom.get_namespaced_custom_object, GROUP, VERSION, namespace, plural, name
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return obj

    async def list_custom(
        self, plural: str, namespace: str, labels: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        selector = ",".join(f"{key}={value}" for key, value in labels.items())
        listing = await self._call(
            self._custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            plural,
            label_selector=selector,
        )
        items: list[dict[str, Any]] = listing.get("items") or []
        return [item for item in items if _has_labels(item, labels)]

    async def create_custom(self, plural: str, body: Mapping[str, Any]) -> bool:
        """Create an object; False when one of that name exists already (not an error)."""
        namespace = body["metadata"]["namespace"]
        try:
            await self._write(
                self._custom.create_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                plural,
                dict(body),
            )
        except ApiException as error:
            if error.status == 409 and status_reason(error) == "AlreadyExists":
                return False
            raise
        return True

    async def patch_custom(
        self, plural: str, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> None:
        """A JSON merge patch of the object (its metadata and spec)."""
        await self._write(
            self._custom.patch_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            plural,
            name,
            dict(patch),
        )

    async def patch_custom_status(
        self, plural: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> None:
        await self._write(
            self._custom.patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            namespace,
            plural,
            name,
            {"status": dict(status)},
        )

    async def delete_custom(self, plural: str, namespace: str, name: str) -> None:
        """Delete an object (its own children go with it); an absent one is not an error."""
        try:
            await self._write(
                self._custom.delete_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                plural,
                name,
                body={"propagationPolicy": "Background"},
            )
        except ApiException as error:
            if error.status != 404:
                raise

    async def list_jobs(self, namespace: str, owner: str) -> list[dict[str, Any]]:
        """The Jobs of one FineTuneJob, every generation (label finetune.dev/job=<owner>)."""
        return await self._list(self._batch.list_namespaced_job, namespace, {LABEL_JOB: owner})

    async def list_pods(self, namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        return await self._list(self._core.list_namespaced_pod, namespace, labels)

    async def _list(
        self, call: Callable[..., Any], namespace: str, labels: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        selector = ",".join(f"{key}={value}" for key, value in labels.items())
        listing = await self._call(call, namespace, label_selector=selector)
        items: list[dict[str, Any]] = listing.get("items") or []
        # Selected again here: a server that ignores the selector must not widen the result.
        return [item for item in items if _has_labels(item, labels)]

    async def create_job(self, job: Mapping[str, Any]) -> tuple[bool, dict[str, Any] | None]:
        """Create a Job: (whether this call created it, the Job as the server has it). One
        of that name may exist already (the same run's Job: names are deterministic), which
        is not an error; it is read instead (None if it is gone again). Any other 409
        (Conflict) created nothing and is raised, to be retried."""
        namespace, name = job["metadata"]["namespace"], job["metadata"]["name"]
        try:
            created: dict[str, Any] = await self._write(
                self._batch.create_namespaced_job, namespace, job
            )
        except ApiException as error:
            if error.status == 409 and status_reason(error) == "AlreadyExists":
                return False, await self._read_job(namespace, name)
            raise
        return True, created

    async def _read_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = await self._call(
                self._batch.read_namespaced_job, name, namespace
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return found

    async def delete_job(self, namespace: str, name: str) -> None:
        """Delete a Job and, in the background, its pods; an absent Job is not an error."""
        try:
            await self._write(
                self._batch.delete_namespaced_job,
                name,
                namespace,
                body={"propagationPolicy": "Background"},
            )
        except ApiException as error:
            if error.status != 404:
                raise


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
