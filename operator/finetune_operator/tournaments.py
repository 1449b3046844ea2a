"""Reconciling one FineTuneTournament: observe, decide (finetune_core.tournament_lifecycle),
act, record.

One pass reads the tournament and its child FineTuneJobs (label finetune.dev/tournament),
reads the evaluation reports of the children that finished, asks the lifecycle for a
decision and carries it out: delete the children of removed candidates, create or update
children (each owned by the tournament and labelled with its candidate and the tournament
generation it was written for), write the report, promote the winner, then merge the status
patch and post the Events. The children themselves are reconciled as any FineTuneJob is
(finetune_operator.controller); a change of theirs triggers a pass here.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from finetune_core.api import API_VERSION, KIND, PLURAL, EvaluationReport
from finetune_core.store import ArtifactStore, read_model_if_valid
from finetune_core.tournament import TOURNAMENT_KIND, TOURNAMENT_PLURAL
from finetune_core.tournament_lifecycle import (
    LABEL_TOURNAMENT,
    ChildPlan,
    PromotionPlan,
    ReportPlan,
    TournamentDecision,
    TournamentObservation,
    TournamentState,
    decide,
    evaluations_to_read,
    tournament_state,
)
from finetune_core.tournament_promotion import promote_winner
from finetune_operator.builders import LABEL_MANAGED_BY, MANAGED_BY
from finetune_operator.controller import EventPoster
from finetune_operator.kube import Kube

log = logging.getLogger(__name__)

MAX_PASSES = 4


def replacing(current: Any, wanted: Any) -> Any:
    """A JSON merge patch that turns `current` into `wanted` (null removes what `wanted`
    lacks): a child's spec is replaced, never merged with the previous generation's."""
    if not (isinstance(current, Mapping) and isinstance(wanted, Mapping)):
        return wanted
    patch: dict[str, Any] = {key: None for key in current if key not in wanted}
    for key, value in wanted.items():
        if key not in current:
            patch[key] = value
        elif current[key] != value:
            patch[key] = replacing(current[key], value)
    return patch


def child_body(obj: Mapping[str, Any], plan: ChildPlan) -> dict[str, Any]:
    """The candidate's FineTuneJob: owned by the tournament (deleting it deletes the
    children), labelled with the tournament, the candidate and the generation."""
    meta = obj["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": plan.job,
            "namespace": meta["namespace"],
            "labels": {**plan.labels(meta["name"]), LABEL_MANAGED_BY: MANAGED_BY},
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": TOURNAMENT_KIND,
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": plan.spec,
    }


class TournamentController:
    """Reconciles FineTuneTournaments; one at a time per object."""

    def __init__(self, kube: Kube, store: ArtifactStore, post_event: EventPoster):
        self.kube = kube
        self.store = store
        self.post_event = post_event
        self._locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    async def reconcile(self, namespace: str, name: str) -> None:
        lock = self._locks.setdefault((namespace, name), asyncio.Lock())
        async with lock:
            for _ in range(MAX_PASSES):
                if not await self._pass(namespace, name):
                    break

    async def _pass(self, namespace: str, name: str) -> bool:
        obj = await self.kube.get_custom(TOURNAMENT_PLURAL, namespace, name)
        if obj is None:
            return False
        children = await self.kube.list_custom(PLURAL, namespace, {LABEL_TOURNAMENT: name})
        state = tournament_state(obj, children)
        observation = await self._observe(state)
        decision = decide(observation, datetime.now(UTC))
        if decision.promote is not None:
            await self._write_report(decision.report)
            observation = await self._promote(observation, decision.promote)
            decision = decide(observation, datetime.now(UTC))
        await self._carry_out(obj, children, decision)
        if decision.status:
            await self.kube.patch_custom_status(TOURNAMENT_PLURAL, namespace, name, decision.status)
        for event in decision.events:
            log.info("%s/%s: %s: %s", namespace, name, event.reason, event.message)
            self.post_event(obj, event)
        return decision.requeue

    async def _observe(self, state: TournamentState) -> TournamentObservation:
        def read() -> dict[str, EvaluationReport | None]:
            return {
                candidate: read_model_if_valid(self.store, run.evaluation, EvaluationReport)
                for candidate, run in evaluations_to_read(state).items()
            }

        evaluations = await asyncio.to_thread(read)
        return TournamentObservation(
            state=state,
            evaluations=evaluations,
            report_uri=self.store.uri(state.paths.report_html),
        )

    async def _promote(
        self, observation: TournamentObservation, plan: PromotionPlan
    ) -> TournamentObservation:
        return await asyncio.to_thread(
            promote_winner, self.store, observation, plan, datetime.now(UTC)
        )

    async def _write_report(self, report: ReportPlan | None) -> None:
        if report is None:
            return
        for key, (body, content_type) in report.files.items():
            await asyncio.to_thread(self.store.put_bytes, key, body, content_type)

    async def _carry_out(
        self,
        obj: Mapping[str, Any],
        children: list[dict[str, Any]],
        decision: TournamentDecision,
    ) -> None:
        namespace = obj["metadata"]["namespace"]
        for job in decision.delete:
            await self.kube.delete_custom(PLURAL, namespace, job)
            log.info("%s: deleted FineTuneJob %s of a removed candidate", namespace, job)
        existing = {child["metadata"]["name"]: child for child in children}
        for plan in decision.children:
            body = child_body(obj, plan)
            current = existing.get(plan.job)
            if current is None:
                created = await self.kube.create_custom(PLURAL, body)
                log.info(
                    "%s: %s FineTuneJob %s",
                    namespace,
                    "created" if created else "found existing",
                    plan.job,
                )
                continue
            patch = {
                "metadata": {"labels": body["metadata"]["labels"]},
                "spec": replacing(current.get("spec") or {}, plan.spec),
            }
            await self.kube.patch_custom(PLURAL, namespace, plan.job, patch)
            log.info("%s: updated FineTuneJob %s (generation %d)", namespace, plan.job, plan.round)
        await self._write_report(decision.report)
