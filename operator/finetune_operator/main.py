"""`finetune operator`: the FineTuneJob operator process.

Configured by FINETUNE_* environment variables (finetune_operator.settings, set by the Helm
chart). Serves a liveness probe at :<health_port>/healthz and Prometheus metrics at
:<metrics_port>/metrics; watches cluster-wide, or only FINETUNE_NAMESPACES.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import signal
import socket
import sys
import threading
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable

import kopf
from aiohttp import web
from kubernetes.client import ApiClient
from kubernetes.config import ConfigException
from prometheus_client import start_http_server

from finetune_core.store import open_store
from finetune_operator import handlers, polling
from finetune_operator.controller import Controller
from finetune_operator.kube import Kube, load_configuration
from finetune_operator.leader import LeaderElector, LeaseApi, LeaseConfig, own_namespace
from finetune_operator.metrics import OperatorMetrics
from finetune_operator.settings import OperatorSettings
from finetune_operator.tournaments import TournamentController

log = logging.getLogger(__name__)

STOP_POLL_SECONDS = 0.1
# Threads for the blocking API and store calls (kopf's workers and the poll share them), and
# so reconciles at work at once (finetune_operator.work_slots).
THREADS = handlers.WORKERS + polling.CONCURRENCY


Flag = threading.Event | asyncio.Event


async def operate(
    settings: OperatorSettings,
    *,
    metrics: OperatorMetrics | None = None,
    liveness_endpoint: str | None = None,
    stop_flag: Flag | None = None,
    ready_flag: Flag | None = None,
) -> None:
    """Run the operator until stop_flag is set (or SIGTERM, in the main thread).

    With leader election (the default) kopf runs only while this process holds the Lease:
    a candidate that is not the leader watches nothing, writes nothing and leaves kopf's
    per-object state alone. On becoming the leader it starts kopf afresh, which lists
    every FineTuneJob and Job and resumes each one; on losing the Lease it stops kopf
    (cancelling the handlers in flight) and is a candidate again.
    """
    kube = Kube.connect(settings.api_timeout_seconds)
    store = open_store(settings.store, settings.s3_endpoint)
    controller = Controller(
        settings,
        kube,
        store,
        metrics or OperatorMetrics(),
        post_event=handlers.post_event,
        slots=THREADS,
    )
    tournaments = TournamentController(kube, store, post_event=handlers.post_event)
    registry = kopf.OperatorRegistry()
    handlers.register(registry, controller, settings, tournaments)
    kopf_settings = kopf.OperatorSettings()
    handlers.configure(kopf_settings)
    # kopf's own requests time out like the operator's (its default is 5 minutes).
    kopf_settings.networking.request_timeout = settings.api_timeout_seconds
    kopf_settings.networking.connect_timeout = settings.api_timeout_seconds
    kopf_settings.watching.connect_timeout = settings.api_timeout_seconds
    log.info("store %s; %s", store.uri(), ", ".join(settings.namespaces) or "all namespaces")

    # The blocking clients (Kubernetes, S3) run in the loop's default thread pool; asyncio
    # sizes it by CPU count (6 threads on 2 cores), which would serialize the reconciles of
    # a burst of objects on a few in-flight requests.
    asyncio.get_running_loop().set_default_executor(
        concurrent.futures.ThreadPoolExecutor(THREADS, thread_name_prefix="api")
    )

    async def run_kopf(kopf_stop: Flag | None, ready: Flag | None, endpoint: str | None) -> None:
        # From the moment kopf is told to stop (a lost Lease), not one more write: a reconcile
        # still in flight has its next write refused, wherever it is.
        kube.may_write = lambda: kopf_stop is None or not kopf_stop.is_set()

        # The poll runs only while kopf does (so only in the leader): kopf's handlers start
        # it (handlers.register); it stops when kopf is told to stop, and in any case when
        # kopf has stopped.
        async def stop_polling_on_flag() -> None:
            while kopf_stop is not None and not kopf_stop.is_set():
                await asyncio.sleep(STOP_POLL_SECONDS)
            await controller.stop_polling()

        watcher = asyncio.create_task(stop_polling_on_flag(), name="poll stopper")
        try:
            await _kopf(kopf_stop, ready, endpoint)
        finally:
            watcher.cancel()
            await controller.stop_polling()

    async def _kopf(kopf_stop: Flag | None, ready: Flag | None, endpoint: str | None) -> None:
        await kopf.operator(
            registry=registry,
            settings=kopf_settings,
            clusterwide=not settings.namespaces,
            namespaces=settings.namespaces,
            liveness_endpoint=endpoint,
            stop_flag=kopf_stop,
            ready_flag=ready,
        )

    try:
        if not settings.leader_election:
            await run_kopf(stop_flag, ready_flag, liveness_endpoint)
        else:
            await _lead(settings, run_kopf, liveness_endpoint, stop_flag, ready_flag)
    finally:
        kube.close()


async def _lead(
    settings: OperatorSettings,
    run_kopf: Callable[[Flag | None, Flag | None, str | None], Awaitable[None]],
    liveness_endpoint: str | None,
    stop_flag: Flag | None,
    ready_flag: Flag | None,
) -> None:
    """Candidate, leader, candidate again ... until stopped."""
    stop = asyncio.Event()  # this process stops (stop_flag, SIGTERM, kopf stopped by itself)
    in_main_thread = threading.current_thread() is threading.main_thread()

    def catch_signals() -> None:
        # kopf installs its own handlers while it runs and leaves them behind: take them back.
        if in_main_thread:
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, stop.set)

    async def stopping() -> bool:
        if stop_flag is not None and stop_flag.is_set():
            stop.set()
        return stop.is_set()

    async def watch_stop_flag() -> None:
        while not await stopping():
            await asyncio.sleep(STOP_POLL_SECONDS)

    namespace = settings.lease_namespace or own_namespace()
    identity = settings.leader_identity or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
    config = LeaseConfig(
        name=settings.lease_name,
        namespace=namespace,
        identity=identity,
        lease_duration=settings.lease_duration_seconds,
        renew_deadline=settings.lease_renew_deadline_seconds,
        retry_period=settings.lease_retry_period_seconds,
    )
    lease_configuration = load_configuration()
    # One attempt per call: urllib3's own retries would stretch a renewal that timed out
    # past the renew deadline (even past the lease duration, when another candidate may
    # already lead); the election retries every retry period by itself.
    lease_configuration.retries = False
    lease_client = ApiClient(lease_configuration)
    elector = LeaderElector(
        LeaseApi(lease_client, settings.lease_renew_deadline_seconds / 2), config
    )
    health = await _serve_health(liveness_endpoint, elector)
    catch_signals()
    # Created before kopf starts: kopf treats tasks created while it runs as its own.
    stop_watcher = asyncio.create_task(watch_stop_flag(), name="stop-flag watcher")
    try:
        while await elector.acquire(stopping):
            kopf_stop = asyncio.Event()  # set when the Lease is lost or this process stops
            lost = asyncio.create_task(elector.hold(), name="lease renewal")
            stopped = asyncio.create_task(stop.wait(), name="stop waiter")
            for task in (lost, stopped):
                task.add_done_callback(functools.partial(_set_flag, kopf_stop))
            kopf_ready = asyncio.Event()
            started = asyncio.create_task(
                _when_ready(kopf_ready, catch_signals, ready_flag), name="readiness relay"
            )
            try:
                await run_kopf(kopf_stop, kopf_ready, None)
            finally:
                stopped.cancel()
                started.cancel()
                catch_signals()
            if not lost.done():  # stopped, or kopf stopped by itself (a signal, a fatal error)
                lost.cancel()
                stop.set()
                break
            log.warning(
                "lease %s/%s: not the leader any more; reconciling stops",
                namespace,
                settings.lease_name,
            )
    finally:
        stop_watcher.cancel()
        await elector.release()
        if health is not None:
            await health.cleanup()
        lease_client.close()


def _set_flag(flag: asyncio.Event, _: object) -> None:
    flag.set()


async def _when_ready(
    kopf_ready: asyncio.Event, catch_signals: Callable[[], None], ready_flag: Flag | None
) -> None:
    """Once kopf runs: take the signals back from it, so that SIGTERM stops kopf through its
    stop flag (stopped by its own signal handler, kopf 1.45 leaves the waiter of a given
    stop flag behind and then waits 5 s for it), and pass the readiness on."""
    await kopf_ready.wait()
    catch_signals()
    if ready_flag is not None:
        ready_flag.set()


async def _serve_health(endpoint: str | None, elector: LeaderElector) -> web.AppRunner | None:
    """The liveness endpoint, served whether or not this process leads (kopf's own runs only
    while kopf does): 200 with {"leader": true|false}."""
    if endpoint is None:
        return None
    url = urllib.parse.urlsplit(endpoint)

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"leader": elector.leading})

    app = web.Application()
    app.router.add_get(url.path or "/healthz", healthz)
    # No keep-alive: a connection left open would be a task kopf waits for when it stops.
    runner = web.AppRunner(app, handle_signals=False, keepalive_timeout=0)
    await runner.setup()
    await web.TCPSite(runner, url.hostname, url.port).start()
    return runner


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
    # kopf logs every handler run of every object ("Handler 'child-job' succeeded."): eleven
    # lines per lifecycle that say nothing the operator's own lines do not. Its warnings and
    # errors stay.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
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
