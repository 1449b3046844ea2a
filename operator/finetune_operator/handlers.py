"""The kopf handlers: every trigger leads to the same level-based reconcile of a FineTuneJob
(or, for FineTuneTournaments, of the tournament: see register_tournaments).

- a FineTuneJob's watch event: it was created, its spec or annotations changed (a new
  generation, an approval), or the operator starts and lists it; not the event of the
  operator's own status patch (it tells nothing new), and not the listing of a settled one;
- one of its Jobs changes (label finetune.dev/job=<name>): a pod started, the Job ended;
- the operator's own poll (finetune_operator.polling) of runs in progress, every
  FINETUNE_PROGRESS_INTERVAL seconds, which refreshes status.progress, catches anything a
  missed watch event would have told and retries a reconcile that failed.

Plain event handlers, not kopf's create/update handlers and timers: those keep their state
in the object (a finalizer, a last-handled-configuration annotation, handler progress),
three extra writes per lifecycle and a finalizer a deleted object waits on. The reconcile
needs none of it: it is level-based, reads what it needs and records it in the status.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable, Mapping
from typing import Any, cast

import aiohttp
import kopf
from kubernetes.client import Configuration

from finetune_core.api import GROUP, PLURAL, VERSION
from finetune_core.lifecycle import Event
from finetune_core.tournament import TOURNAMENT_KIND, TOURNAMENT_PLURAL
from finetune_core.tournament_lifecycle import LABEL_TOURNAMENT, tournament_state
from finetune_operator.builders import LABEL_JOB
from finetune_operator.controller import Controller
from finetune_operator.kube import NotLeading, load_configuration
from finetune_operator.observe import job_summary, settled
from finetune_operator.settings import OperatorSettings
from finetune_operator.tournaments import TournamentController

log = logging.getLogger(__name__)

FINALIZER = "finetune.dev/operator"
# kopf's index of the Jobs by owner (finetune_operator.job_cache), and the keyword argument
# under which kopf hands it to every handler.
JOBS_INDEX = "jobs_by_owner"
TIMER_EXIT_SECONDS = 2.0


def post_event(obj: Mapping[str, Any], event: Event) -> None:
    """Queue a Kubernetes Event on the object; kopf posts it in the background."""
    body = kopf.Body(cast(kopf.RawBody, dict(obj)))
    kopf.event(body, type=event.type, reason=event.reason, message=event.message)


def connection_info(configuration: Configuration) -> kopf.ConnectionInfo:
    """kopf's connection from the official client's configuration, so that kopf and the
    operator's own calls reach the same server with the same credentials."""
    header = configuration.get_api_key_with_prefix(
        "BearerToken"
    ) or configuration.get_api_key_with_prefix("authorization")
    scheme, _, token = (header or "").rpartition(" ")
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        username=configuration.username or None,
        password=configuration.password or None,
        scheme=scheme or None,
        token=token or None,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
    )


def kopf_session(info: kopf.ConnectionInfo, watches: int) -> kopf.AiohttpSession:
    """kopf's HTTP session, as kopf would build it from `info`, but with a bounded number of
    connections: its own has no limit, and kopf posts each object's Events from a task of
    its own, so a burst opened a TLS connection per object posting (116 at once in a burst
    of 300, each holding asyncio's 256 KiB read buffer). The watch streams hold one each;
    EVENT_CONNECTIONS are left for the rest. kopf closes the session when it is done."""
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            limit=watches + EVENT_CONNECTIONS, ssl=info.as_ssl_context()
        ),
        headers=info.as_http_headers(),
    )
    return kopf.AiohttpSession(server=info.server, aiohttp_session=session)


async def reconcile(controller: Controller, namespace: str, name: str) -> None:
    """A failed reconcile is retried by the poll (the controller put it on the schedule)
    and shown in the object's conditions; kopf need not log its traceback."""
    try:
        await controller.reconcile(namespace, name)
    except NotLeading:
        log.info("%s/%s: reconcile stopped: the Lease was lost", namespace, name)
    except Exception as error:
        log.warning("%s/%s: reconcile failed, retried by the poll: %s", namespace, name, error)


def tournament_in_progress(body: kopf.Body, **_: Any) -> bool:
    """Whether a tournament can move on without a new event (a child's change is one)."""
    return not tournament_state(body).settled


def register(
    registry: kopf.OperatorRegistry,
    controller: Controller,
    settings: OperatorSettings,
    tournaments: TournamentController | None = None,
) -> None:
    """Register the handlers on a registry of their own (not kopf's global default)."""
    interval = settings.progress_interval_seconds
    if tournaments is not None:
        register_tournaments(registry, tournaments, interval)

    watches = WATCHED_KINDS * max(1, len(settings.namespaces))

    @kopf.on.login(registry=registry, id="login")
    async def login(**_: Any) -> kopf.AiohttpSession:
        # Loaded afresh on every login: kopf logs in again when a token expires.
        return kopf_session(connection_info(load_configuration()), watches)

    @kopf.index(
        "batch", "v1", "jobs", registry=registry, id=JOBS_INDEX, labels={LABEL_JOB: kopf.PRESENT}
    )
    async def jobs_by_owner(
        namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
    ) -> dict[tuple[str, str], dict[str, Any]]:
        # async although it awaits nothing: kopf runs a plain function in its thread pool, a
        # hop through a busy pool for every Job event before the event's handler may run.
        return {(namespace or "", labels[LABEL_JOB]): job_summary(body)}

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry, id="finetunejob")
    async def finetunejob_event(
        event: kopf.RawEvent, body: kopf.Body, meta: kopf.Meta, **kwargs: Any
    ) -> None:
        controller.jobs.use(kwargs[JOBS_INDEX])
        controller.start_polling()
        namespace, name = meta["namespace"], meta["name"]
        kind = event.get("type")
        if kind == "DELETED":
            controller.forget(namespace, name)
            return
        controller.seen(namespace, name, event["object"], listed=kind is None)
        if kind == "MODIFIED" and controller.own_write(
            namespace, name, meta.get("resourceVersion")
        ):
            return
        if kind is None and settled(body):
            return  # listed (the operator starts, a watch resumes): nothing to do
        await reconcile(controller, namespace, name)

    @kopf.on.event(
        "batch", "v1", "jobs", registry=registry, id="child-job", labels={LABEL_JOB: kopf.PRESENT}
    )
    async def child_job_changed(
        event: kopf.RawEvent, body: kopf.Body, meta: kopf.Meta, labels: kopf.Labels, **kwargs: Any
    ) -> None:
        # A listing is no change: when the operator starts, listing the FineTuneJobs
        # reconciles every run in progress already; a change missed while a watch resumed
        # is caught by the poll.
        controller.jobs.use(kwargs[JOBS_INDEX])
        controller.start_polling()
        kind, namespace, owner = event.get("type"), meta["namespace"], labels[LABEL_JOB]
        created = controller.jobs.observed(namespace, owner, meta.get("uid") or "")
        if kind == "ADDED" and created is not None and created == job_summary(body):
            return  # the Job this operator created, as it created it: nothing new
        if kind is not None:
            await reconcile(controller, namespace, owner)


def register_tournaments(
    registry: kopf.OperatorRegistry, tournaments: TournamentController, interval: float
) -> None:
    """FineTuneTournaments: reconciled when created, edited (a new generation, an approval)
    or resumed, when one of their children changes, and by a timer while in progress."""

    @kopf.on.resume(
        GROUP, VERSION, TOURNAMENT_PLURAL, registry=registry, id="tournament", backoff=interval
    )
    @kopf.on.create(
        GROUP, VERSION, TOURNAMENT_PLURAL, registry=registry, id="tournament", backoff=interval
    )
    @kopf.on.update(
        GROUP, VERSION, TOURNAMENT_PLURAL, registry=registry, id="tournament", backoff=interval
    )
    async def tournament_changed(meta: kopf.Meta, **_: Any) -> None:
        await tournaments.reconcile(meta["namespace"], meta["name"])

    @kopf.timer(
        GROUP,
        VERSION,
        TOURNAMENT_PLURAL,
        registry=registry,
        id="tournament-poll",
        interval=interval,
        backoff=interval,
        when=tournament_in_progress,
    )
    async def tournament_poll(meta: kopf.Meta, **_: Any) -> None:
        await tournaments.reconcile(meta["namespace"], meta["name"])

    @kopf.on.event(
        GROUP,
        VERSION,
        PLURAL,
        registry=registry,
        id="tournament-child",
        labels={LABEL_TOURNAMENT: kopf.PRESENT},
    )
    async def tournament_child_changed(meta: kopf.Meta, labels: kopf.Labels, **_: Any) -> None:
        await tournaments.reconcile(meta["namespace"], labels[LABEL_TOURNAMENT])


class TournamentDiffBase(kopf.AnnotationsDiffBaseStorage):
    """kopf's diff base (the object as last handled, kept in an annotation), built for
    FineTuneTournaments only.

    kopf deep-copies every watched object on every event to diff it against that base, but
    only create/update handlers use the difference, and only tournaments have them. For a
    FineTuneJob's or a Job's event the copy was wasted: about a tenth of the operator's CPU
    in a burst (benchmarks/operator_scale.py). An object whose kind is unknown gets the
    full build, as before."""

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None
    ) -> kopf.BodyEssence:
        if body.get("kind") not in (None, TOURNAMENT_KIND):
            return kopf.BodyEssence()
        return super().build(body=body, extra_fields=extra_fields)


def configure(kopf_settings: kopf.OperatorSettings) -> None:
    """kopf's own settings, each chosen for an operator that holds thousands of objects."""
    # No peering objects (so no RBAC for them): leader election is the operator's own.
    kopf_settings.peering.standalone = True
    # A FineTuneJob's handlers are event handlers: kopf adds no finalizer to it. A
    # tournament's are kopf's create/update handlers (there are few tournaments), whose
    # finalizer carries this operator's name.
    kopf_settings.persistence.finalizer = FINALIZER
    kopf_settings.persistence.diffbase_storage = TournamentDiffBase()
    # Only the Events we post ourselves (kopf's log lines stay logs): an Event per handler
    # run would be a write per watch event.
    kopf_settings.posting.loggers = False
    # Events say which component and pod posted them (kubectl describe's "From").
    kopf_settings.posting.reporting_component = REPORTING_COMPONENT
    kopf_settings.posting.reporting_instance = socket.gethostname()
    # No more posting workers than connections for them. kopf's request timeout counts
    # the wait for a connection: with a worker per object in a burst of 1,000, hundreds of
    # posts used up their 30 s in that wait and were sent again, while the first send had
    # been answered; each post gets a generated name, so the Event was there twice. A
    # worker now waits for its slot without a clock, and leaves as soon as its object's
    # queue is empty, so the slots go round.
    kopf_settings.posting.worker_limit = EVENT_POSTERS
    kopf_settings.posting.idle_timeout = POSTER_IDLE_SECONDS
    # kopf's worker limit stays unset (one worker per object with events queued): a worker
    # holds its slot for queueing.idle_timeout after its last event, so a limit of N caps
    # the burst of a thousand creations at N objects per idle timeout. Concurrency is
    # bounded where it costs: the thread pool of the blocking clients (finetune_operator.main).
    # On exit, cancel handlers in flight rather than let them finish: a reconcile is safe to
    # interrupt anywhere.
    kopf_settings.queueing.exit_timeout = 0
    # The initial listing (at every start and new leadership: thousands of FineTuneJobs and
    # twice as many Jobs) comes in pages, so neither this process nor the API server holds
    # one huge response; a watch then resumes from bookmarks without listing again.
    kopf_settings.watching.chunk_size = LIST_PAGE
    # A tournament's timer stops when it settles, usually while finishing the very reconcile
    # that settled it: wait for that instead of polling the exiting timer for a minute.
    kopf_settings.background.instant_exit_timeout = TIMER_EXIT_SECONDS


# The kinds kopf watches, each in every watched namespace (or once cluster-wide):
# FineTuneJobs, their Jobs and FineTuneTournaments.
WATCHED_KINDS = 3
# kopf's connections beyond its watch streams: Event posts and the initial listings.
EVENT_CONNECTIONS = 20
# Event posts at once: most of those connections, the rest left for kopf's own requests.
EVENT_POSTERS = 16
# How long an Event poster with nothing left to post keeps its slot (kopf's default: 1 s).
POSTER_IDLE_SECONDS = 0.05
REPORTING_COMPONENT = "finetune-operator"

# Objects per page of kopf's initial listings.
LIST_PAGE = 500

# Threads for the reconciles started by watch events (the poll has its own limit).
WORKERS = 32
