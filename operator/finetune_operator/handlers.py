"""The kopf handlers: every trigger leads to the same level-based reconcile of a FineTuneJob
(or, for FineTuneTournaments, of the tournament: see register_tournaments).

- the FineTuneJob is created, its spec or annotations change (a new generation, an
  approval), or the operator starts and resumes it;
- one of its Jobs changes (label finetune.dev/job=<name>): a pod started, the Job ended;
- a timer every FINETUNE_PROGRESS_INTERVAL seconds while the run is in progress, which
  refreshes status.progress and catches anything a missed watch event would have told.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import kopf
from kubernetes.client import Configuration

from finetune_core.api import GROUP, PLURAL, VERSION
from finetune_core.lifecycle import Event
from finetune_core.tournament import TOURNAMENT_PLURAL
from finetune_core.tournament_lifecycle import LABEL_TOURNAMENT, tournament_state
from finetune_operator.builders import LABEL_JOB
from finetune_operator.controller import Controller
from finetune_operator.kube import load_configuration
from finetune_operator.observe import settled
from finetune_operator.settings import OperatorSettings
from finetune_operator.tournaments import TournamentController

FINALIZER = "finetune.dev/operator"
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


def in_progress(body: kopf.Body, **_: Any) -> bool:
    """Whether the object's run can move on without a new event; kopf keeps the timer of a
    settled object stopped (a finished run, or one awaiting approval)."""
    return not settled(body)


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

    @kopf.on.login(registry=registry, id="login")
    def login(**_: Any) -> kopf.ConnectionInfo:
        # Loaded afresh on every login: kopf logs in again when a token expires.
        return connection_info(load_configuration())

    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry, id="reconcile", backoff=interval)
    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry, id="reconcile", backoff=interval)
    @kopf.on.update(GROUP, VERSION, PLURAL, registry=registry, id="reconcile", backoff=interval)
    async def finetunejob_changed(meta: kopf.Meta, **_: Any) -> None:
        await controller.reconcile(meta["namespace"], meta["name"])

    @kopf.timer(
        GROUP,
        VERSION,
        PLURAL,
        registry=registry,
        id="poll",
        interval=interval,
        backoff=interval,
        when=in_progress,
    )
    async def finetunejob_poll(meta: kopf.Meta, **_: Any) -> None:
        await controller.reconcile(meta["namespace"], meta["name"])

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry, id="deleted")
    def finetunejob_event(event: kopf.RawEvent, meta: kopf.Meta, **_: Any) -> None:
        # A settled object carries no finalizer, so its deletion is seen only as an event.
        if event.get("type") == "DELETED":
            controller.forget(meta["namespace"], meta["name"])

    @kopf.on.event(
        "batch", "v1", "jobs", registry=registry, id="child-job", labels={LABEL_JOB: kopf.PRESENT}
    )
    async def child_job_changed(meta: kopf.Meta, labels: kopf.Labels, **_: Any) -> None:
        await controller.reconcile(meta["namespace"], labels[LABEL_JOB])


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


def configure(kopf_settings: kopf.OperatorSettings) -> None:
    """kopf's own settings: no peering objects (so no RBAC for them), a finalizer that
    names this operator, and only the Events we post ourselves (kopf's log lines stay logs)."""
    kopf_settings.peering.standalone = True
    kopf_settings.persistence.finalizer = FINALIZER
    kopf_settings.posting.loggers = False
    # A timer stops when its run settles, usually while finishing the very reconcile that
    # settled it: wait for that instead of polling the exiting timer for a minute.
    kopf_settings.background.instant_exit_timeout = TIMER_EXIT_SECONDS
    # On exit, cancel handlers in flight rather than let them finish: a reconcile is safe to
    # interrupt anywhere, and a handler finishing after kopf stopped the timers would start
    # a timer again that nothing stops (kopf 1.45 then waits 5 s before cancelling it).
    kopf_settings.queueing.exit_timeout = 0
