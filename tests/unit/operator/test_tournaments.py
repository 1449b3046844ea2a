"""What the operator sends for a tournament's children, without a server."""

from __future__ import annotations

from finetune_core.lifecycle import merge_patch
from finetune_core.tournament_lifecycle import ChildPlan
from finetune_operator.tournaments import child_body, replacing


def test_a_childs_spec_is_replaced_not_merged_with_the_previous_generations() -> None:
    before = {"lora": {"r": 8, "alpha": 16}, "training": {"maxSteps": 4}, "seed": 1}
    after = {"lora": {"r": 16}, "training": {"maxSteps": 4}, "evaluation": {"samples": 2}}
    patch = replacing(before, after)
    assert patch == {
        "seed": None,
        "lora": {"r": 16, "alpha": None},
        "evaluation": {"samples": 2},
    }
    assert merge_patch(before, patch) == after


def test_a_child_is_owned_by_its_tournament_and_labelled_with_its_generation() -> None:
    tournament = {"metadata": {"name": "cup", "namespace": "ml", "uid": "u-9"}}
    plan = ChildPlan(candidate="fast", job="cup-fast", spec={"model": {}}, round=3)
    body = child_body(tournament, plan)
    assert body["kind"] == "FineTuneJob"
    assert body["metadata"]["labels"] == {
        "finetune.dev/tournament": "cup",
        "finetune.dev/candidate": "fast",
        "finetune.dev/tournament-generation": "3",
        "app.kubernetes.io/managed-by": "finetune-operator",
    }
    (owner,) = body["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("FineTuneTournament", "u-9", True)
