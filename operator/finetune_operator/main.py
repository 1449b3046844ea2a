"""`finetune operator`: the FineTuneJob operator process.

Configured by FINETUNE_* environment variables (finetune_operator.settings, set by the Helm
chart). Serves a liveness probe at :<health_port>/healthz and Prometheus metrics at
:<metrics_port>/metrics; watches cluster-wide, or only FINETUNE_NAMESPACES.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading

import kopf
from kubernetes.config import ConfigException
from prometheus_client import start_http_server

from finetune_core.store import open_store
from finetune_operator import handlers
from finetune_operator.controller import Controller
from finetune_operator.kube import Kube
from finetune_operator.metrics import OperatorMetrics
from finetune_operator.settings import OperatorSettings

log = logging.getLogger(__name__)


async def operate(
    settings: OperatorSettings,
    *,
    metrics: OperatorMetrics | None = None,
    liveness_endpoint: str | None = None,
    stop_flag: threading.Event | asyncio.Event | None = None,
    ready_flag: threading.Event | asyncio.Event | None = None,
) -> None:
    """Run the operator until stop_flag is set (or SIGTERM, in the main thread)."""
    kube = Kube.connect()
    store = open_store(settings.store, settings.s3_endpoint)
    controller = Controller(
        settings, kube, store, metrics or OperatorMetrics(), post_event=handlers.post_event
    )
    registry = kopf.OperatorRegistry()
    handlers.register(registry, controller, settings)
    kopf_settings = kopf.OperatorSettings()
    handlers.configure(kopf_settings)
    log.info("store %s; %s", store.uri(), ", ".join(settings.namespaces) or "all namespaces")
    try:
        await kopf.operator(
            registry=registry,
            settings=kopf_settings,
            clusterwide=not settings.namespaces,
            namespaces=settings.namespaces,
            liveness_endpoint=liveness_endpoint,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )
    finally:
        kube.close()


def run_operator() -> int:
    """The `finetune operator` command: 0 on a clean stop, 1 when misconfigured."""
    try:
        settings = OperatorSettings.from_env()
    except ValueError as error:
        print(f"finetune operator: {error}", file=sys.stderr)
        return 1
    kopf.configure(
        log_format=kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.FULL
    )
    metrics = OperatorMetrics()
    start_http_server(settings.metrics_port, registry=metrics.registry)
    try:
        asyncio.run(
            operate(
                settings,
                metrics=metrics,
                liveness_endpoint=f"http://0.0.0.0:{settings.health_port}/healthz",
            )
        )
    except ConfigException as error:
        print(f"finetune operator: no Kubernetes API to connect to: {error}", file=sys.stderr)
        return 1
    return 0
