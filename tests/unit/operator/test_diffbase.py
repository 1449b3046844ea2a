"""kopf's diff base is built for FineTuneTournaments only (their create/update handlers use
it); FineTuneJobs' and Jobs' events, handled by event handlers, skip the deep copy."""

from __future__ import annotations

from typing import Any, cast

import kopf

from finetune_core.api import API_VERSION, KIND
from finetune_core.tournament import TOURNAMENT_KIND
from finetune_operator.handlers import TournamentDiffBase


def body(kind: str | None) -> kopf.Body:
    raw: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "metadata": {"name": "demo", "namespace": "ml", "labels": {"team": "nlp"}},
        "spec": {"model": {"name": "smollm2-135m"}},
        "status": {"phase": "Training"},
    }
    if kind is not None:
        raw["kind"] = kind
    return kopf.Body(cast(kopf.RawBody, raw))


def test_a_tournament_gets_its_whole_essence() -> None:
    essence = TournamentDiffBase().build(body=body(TOURNAMENT_KIND))
    assert essence.get("spec") == {"model": {"name": "smollm2-135m"}}
    assert essence.get("metadata", {}).get("labels") == {"team": "nlp"}
    assert "status" not in essence


def test_a_finetunejob_or_a_job_gets_none() -> None:
    assert TournamentDiffBase().build(body=body(KIND)) == {}
    assert TournamentDiffBase().build(body=body("Job")) == {}


def test_an_object_of_unknown_kind_gets_the_whole_essence() -> None:
    assert TournamentDiffBase().build(body=body(None)).get("spec") == {
        "model": {"name": "smollm2-135m"}
    }
