"""Carrying out a tournament's promotion plan against the store, for both executors: the
outcome becomes the observation the next tournament decision reads."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from finetune_core.promotion import ChampionChanged, PromotionError, promote
from finetune_core.store import ArtifactStore
from finetune_core.tournament_lifecycle import PromotionPlan, TournamentObservation


def promote_winner(
    store: ArtifactStore, observation: TournamentObservation, plan: PromotionPlan, now: datetime
) -> TournamentObservation:
    """Promote the winner as planned: the promoted URI, the verdict that a newer champion
    won instead, or the promotion's error."""
    try:
        uri = promote(store, plan.run, plan.spec, now, version=plan.version, card_extra=plan.card)
    except ChampionChanged as lost:
        return replace(observation, promotion_rejected=lost.verdict)
    except PromotionError as error:
        return replace(observation, promotion_error=str(error))
    return replace(observation, promoted_uri=uri)
