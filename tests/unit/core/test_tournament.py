"""The FineTuneTournament: its spec (merging, validation with field paths) and the pure
decisions of its lifecycle, played against children whose statuses the test writes."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from finetune_core.api import (
    API_VERSION,
    BenchmarkReport,
    EvaluationReport,
    Metrics,
    ProfileResult,
)
from finetune_core.gate import Verdict
from finetune_core.lifecycle import APPROVE_ANNOTATION, merge_patch
from finetune_core.manifest import InvalidManifest
from finetune_core.tournament import (
    TOURNAMENT_KIND,
    merge,
    parse_tournament,
)
from finetune_core.tournament_lifecycle import (
    LABEL_CANDIDATE,
    LABEL_ROUND,
    LABEL_TOURNAMENT,
    NOTHING,
    TournamentDecision,
    TournamentObservation,
    decide,
    evaluations_to_read,
    tournament_state,
)

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
NAME = "cerberus"
TEMPLATE: dict[str, Any] = {
    "model": {"preset": "smollm2-135m"},
    "dataset": {"uri": "s3://datasets/cerberus/v3.jsonl"},
    "resources": {"gpus": 0},
    "training": {"maxSteps": 4},
    "benchmark": {
        "samples": 5,
        "sla": [
            {"name": "question", "maxNewTokens": 48, "maxLatencySeconds": 10},
            {"name": "answer", "maxNewTokens": 24, "maxLatencySeconds": 6},
        ],
    },
}
CANDIDATES = [
    {"name": "fast", "training": {"learningRate": 0.001}},
    {"name": "slow", "training": {"learningRate": 0.0001}},
    {"name": "wide", "lora": {"r": 32, "alpha": 32}},
]


def tournament(
    generation: int = 1,
    candidates: list[dict[str, Any]] | None = None,
    annotations: dict[str, str] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": TOURNAMENT_KIND,
        "metadata": {
            "name": NAME,
            "namespace": "ml",
            "generation": generation,
            "annotations": dict(annotations or {}),
        },
        "spec": {
            "template": copy.deepcopy(TEMPLATE),
            "candidates": copy.deepcopy(candidates or CANDIDATES),
            **spec,
        },
    }


def problems(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(InvalidManifest) as raised:
        parse_tournament(doc)
    return [str(p) for p in raised.value.problems]


# ------------------------------------------------------------------ spec


def test_candidates_merge_over_the_template_lists_replace_sla_merges_by_name() -> None:
    template = {
        "lora": {"r": 8, "targetModules": ["q_proj", "v_proj"]},
        "benchmark": {
            "samples": 5,
            "sla": [
                {"name": "question", "maxNewTokens": 200, "maxLatencySeconds": 10},
                {"name": "answer", "maxNewTokens": 50, "maxLatencySeconds": 6},
            ],
        },
    }
    override = {
        "lora": {"targetModules": ["o_proj"]},
        "benchmark": {
            "sla": [
                {"name": "answer", "maxLatencySeconds": 8},
                {"name": "summary", "maxNewTokens": 100, "maxLatencySeconds": 12},
            ]
        },
    }
    merged = merge(template, override)
    assert merged["lora"] == {"r": 8, "targetModules": ["o_proj"]}
    assert merged["benchmark"]["samples"] == 5
    assert merged["benchmark"]["sla"] == [
        {"name": "question", "maxNewTokens": 200, "maxLatencySeconds": 10},
        {"name": "answer", "maxNewTokens": 50, "maxLatencySeconds": 8},
        {"name": "summary", "maxNewTokens": 100, "maxLatencySeconds": 12},
    ]
    assert template["lora"]["targetModules"] == ["q_proj", "v_proj"]  # not mutated


def test_each_child_never_promotes_and_is_evaluated_on_the_selection_dataset() -> None:
    held_out = {"uri": "s3://datasets/cerberus/held-out.jsonl"}
    parsed = parse_tournament(tournament(selection={"dataset": held_out}))
    assert list(parsed.children) == ["fast", "slow", "wide"]
    child = parsed.children["wide"]
    assert child.promotion.policy == "none"
    assert child.promotion.alias == NAME
    assert child.lora.r == 32
    assert child.training.max_steps == 4
    assert child.evaluation.dataset is not None
    assert child.evaluation.dataset.uri == held_out["uri"]
    assert parsed.children["fast"].training.learning_rate == 0.001


def test_a_bad_candidate_field_is_named_by_its_path() -> None:
    bad = [*CANDIDATES[:1], {"name": "broken", "lora": {"r": 0}}]
    assert problems(tournament(candidates=bad)) == ["spec.candidates[1].lora.r: must be >= 1"]


def test_a_bad_template_field_is_named_once_in_the_template() -> None:
    doc = tournament()
    doc["spec"]["template"]["training"]["learningRat"] = 0.1
    assert problems(doc) == [
        "spec.template.training.learningRat: unknown field (check the spelling; fields are "
        "camelCase)"
    ]


def test_a_required_field_nobody_sets_is_the_candidates() -> None:
    doc = tournament()
    del doc["spec"]["template"]["model"]
    assert problems(doc) == [
        f"spec.candidates[{index}].model: required" for index in range(len(CANDIDATES))
    ]


@pytest.mark.parametrize(
    ("candidates", "expected"),
    [
        ([{"name": "solo"}], "spec.candidates: 1 candidates: a tournament needs 2 to 16"),
        ([{"name": f"c{i}"} for i in range(17)], "spec.candidates: 17 candidates: a tournament"),
        ([{"name": "a"}, {"name": "a"}], "spec.candidates[1].name: duplicate candidate name"),
        ([{"name": "a"}, {"name": "Big_One"}], "spec.candidates[1].name: must be lower-case"),
        ([{"name": "a"}, {"name": "b" * 45}], "spec.candidates[1].name: the FineTuneJob"),
        (
            [{"name": "a"}, {"name": "b", "promotion": {"policy": "auto"}}],
            "spec.candidates[1].promotion: the tournament promotes its winner",
        ),
    ],
)
def test_candidate_lists_that_cannot_run(candidates: list[dict[str, Any]], expected: str) -> None:
    found = problems(tournament(candidates=candidates))
    assert any(p.startswith(expected) for p in found), found


def test_different_datasets_need_a_selection_dataset() -> None:
    other = [*CANDIDATES[:2], {"name": "tech", "dataset": {"uri": "s3://datasets/c/tech.jsonl"}}]
    (found,) = problems(tournament(candidates=other))
    assert found.startswith("spec.selection.dataset: required when the candidates train on")
    held_out = {"dataset": {"uri": "s3://datasets/held.jsonl"}}
    selected = tournament(candidates=other, selection=held_out)
    assert parse_tournament(selected).children["tech"].dataset.uri == "s3://datasets/c/tech.jsonl"


def test_eval_loss_needs_one_tokenizer() -> None:
    mixed = [{"name": "small"}, {"name": "phi", "model": {"preset": "phi-4"}}]
    (found,) = problems(tournament(candidates=mixed, selection={"metric": "evalLoss"}))
    assert found.startswith("spec.selection.metric: evalLoss compares per-token losses")
    parse_tournament(tournament(candidates=mixed))  # bitsPerByte compares across tokenizers


# ------------------------------------------------------------------ the lifecycle


class World:
    """A tournament and its children, with the decisions applied as an executor would;
    the test plays the children's own lifecycles by writing their statuses."""

    def __init__(self, doc: dict[str, Any]):
        self.obj = doc
        self.obj["metadata"]["uid"] = "t-uid"
        self.children: dict[str, dict[str, Any]] = {}
        self.evaluations: dict[str, EvaluationReport] = {}
        self.promoted: list[str] = []
        self.reports: dict[str, bytes] = {}
        self.created: list[str] = []

    def observe(self, **outcome: Any) -> TournamentObservation:
        state = tournament_state(self.obj, list(self.children.values()))
        wanted = evaluations_to_read(state)
        return TournamentObservation(
            state=state,
            evaluations={c: self.evaluations.get(c) for c in wanted},
            report_uri=f"s3://finetune/{state.paths.report_html}",
            **outcome,
        )

    def step(self, **outcome: Any) -> TournamentDecision:
        decision = decide(self.observe(**outcome), NOW)
        self.apply(decision)
        return decision

    def settle(self, limit: int = 10) -> list[TournamentDecision]:
        """Decide and apply until nothing more happens (promoting when asked)."""
        decisions = []
        for _ in range(limit):
            decision = self.step()
            if decision.promote is not None:
                plan = decision.promote
                self.promoted.append(plan.version)
                uri = f"s3://finetune/models/ml/{NAME}/{plan.version}"
                decisions.append(decision)
                decision = self.step(promoted_uri=uri)
            decisions.append(decision)
            if decision == NOTHING or not (decision.status or decision.children):
                break
        return decisions

    def apply(self, decision: TournamentDecision) -> None:
        self.obj["status"] = merge_patch(self.obj.get("status") or {}, decision.status)
        for plan in decision.children:
            labels = plan.labels(NAME)
            existing = self.children.get(plan.job)
            if existing is None:
                self.created.append(plan.job)
                self.children[plan.job] = {
                    "metadata": {
                        "name": plan.job,
                        "generation": 1,
                        "labels": labels,
                        "ownerReferences": [{"kind": TOURNAMENT_KIND, "uid": "t-uid"}],
                    },
                    "spec": plan.spec,
                }
            else:
                assert plan.update
                existing["metadata"]["labels"] = labels
                existing["metadata"]["generation"] += 1
                existing["spec"] = plan.spec
        for name in decision.delete:
            self.children.pop(name, None)
        if decision.report is not None:
            for key, (body, _) in decision.report.files.items():
                self.reports[key] = body

    def edit(self, **spec: Any) -> None:
        self.obj["spec"].update(spec)
        self.obj["metadata"]["generation"] += 1

    @property
    def status(self) -> dict[str, Any]:
        return dict(self.obj["status"])

    def unsettled(self) -> list[str]:
        return [
            name
            for name, child in self.children.items()
            if (child.get("status") or {}).get("observedGeneration")
            != child["metadata"]["generation"]
            or child["status"]["phase"] not in ("Passed", "Rejected", "Failed")
        ]

    def finish(
        self,
        candidate: str,
        phase: str,
        eval_loss: float | None = 1.2,
        answer_p95: float = 2.5,
        message: str | None = None,
    ) -> None:
        """The candidate's child settles (as its own lifecycle would record it)."""
        child = self.children[f"{NAME}-{candidate}"]
        profiles = [
            ProfileResult(name="question", max_latency_seconds=10, p95=3.5, passed=True),
            ProfileResult(
                name="answer", max_latency_seconds=6, p95=answer_p95, passed=answer_p95 <= 6
            ),
        ]
        child["status"] = {
            "phase": phase,
            "observedGeneration": child["metadata"]["generation"],
            "message": message or f"{candidate} {phase}",
            "sla": None if phase == "Failed" else ("Passed" if answer_p95 <= 6 else "Failed"),
            "metrics": Metrics(eval_loss=eval_loss, base_eval_loss=1.9).to_wire(),
            "benchmark": BenchmarkReport(passed=True, percentile=95, profiles=profiles).to_wire(),
            "artifacts": {
                "run": f"s3://finetune/runs/ml/{NAME}-{candidate}/g1",
                "report": f"s3://finetune/runs/ml/{NAME}-{candidate}/g1/report/index.html",
            },
        }


def condition(status: dict[str, Any], kind: str) -> str:
    return str(next(c for c in status["conditions"] if c["type"] == kind)["status"])


def test_a_new_tournament_runs_and_starts_at_most_max_parallel_children() -> None:
    world = World(tournament(maxParallel=2))
    first = world.step()
    assert first.requeue and first.status["phase"] == "Running"
    assert world.status["done"] == "0/3"
    assert [e["phase"] for e in world.status["leaderboard"]] == ["Waiting"] * 3
    assert condition(world.status, "Reconciling") == "True"
    second = world.step()
    assert [p.job for p in second.children] == [f"{NAME}-fast", f"{NAME}-slow"]
    assert second.children[0].labels(NAME) == {
        LABEL_TOURNAMENT: NAME,
        LABEL_CANDIDATE: "fast",
        LABEL_ROUND: "1",
    }
    assert second.children[0].spec["promotion"]["policy"] == "none"
    assert world.step().children == ()  # a restart, or a second pass, creates no duplicate


def test_max_parallel_one_never_has_two_unsettled_children() -> None:
    world = World(tournament())
    for candidate in ("fast", "slow", "wide"):
        world.settle()
        assert world.unsettled() == [f"{NAME}-{candidate}"]
        world.finish(candidate, "Passed", eval_loss=1.0)
    world.settle()
    assert world.status["phase"] == "Promoted"


def test_lower_eval_loss_wins_among_those_that_passed_and_is_promoted() -> None:
    world = World(tournament(maxParallel=3))
    world.settle()
    world.finish("fast", "Passed", eval_loss=1.10)
    world.finish("slow", "Passed", eval_loss=1.30)
    world.finish("wide", "Rejected", eval_loss=0.90, answer_p95=7.25, message="rejected: slow")
    decisions = world.settle()
    events = [e for d in decisions for e in d.events]
    assert [e.message for e in events if e.reason == "CandidateSettled"] == [
        "candidate fast Passed: fast Passed",
        "candidate slow Passed: slow Passed",
        "candidate wide Rejected: rejected: slow",
    ]
    assert world.promoted == [f"{NAME}-g1-fast"]
    status = world.status
    assert status["phase"] == "Promoted"
    assert status["winner"] == status["leader"] == "fast"
    assert status["done"] == "3/3"
    assert status["promotedModel"] == f"s3://finetune/models/ml/{NAME}/{NAME}-g1-fast"
    assert condition(status, "Ready") == "True"
    ranks = {e["name"]: e.get("rank") for e in status["leaderboard"]}
    assert ranks == {"fast": 1, "slow": 2, "wide": None}
    wide = next(e for e in status["leaderboard"] if e["name"] == "wide")
    assert wide["slaPassed"] is False
    assert [p["seconds"] for p in wide["latency"]] == [3.5, 7.25]
    board = json.loads(world.reports[f"tournaments/ml/{NAME}/g1/report/leaderboard.json"])
    assert board["winner"] == "fast"
    assert board["metric"] == "evalLoss"  # no evaluation.json: the eval loss decides
    assert [c["rank"] for c in board["candidates"]] == [1, 2, None]
    html = world.reports[f"tournaments/ml/{NAME}/g1/report/index.html"].decode()
    assert "runs/ml/cerberus-slow/g1/report/index.html" in html
    # The candidates' own charts, from their run directories in the same store.
    assert 'src="../../../../../runs/ml/cerberus-fast/g1/report/loss.png"' in html
    assert 'src="../../../../../runs/ml/cerberus-fast/g1/report/latency-answer.png"' in html
    assert status["report"] == f"s3://finetune/tournaments/ml/{NAME}/g1/report/index.html"
    assert any(e.reason == "Promoted" for e in events)


def test_bits_per_byte_from_the_evaluation_reports_rank_and_latency_breaks_ties() -> None:
    world = World(tournament(maxParallel=3))
    world.settle()
    world.finish("fast", "Passed", eval_loss=1.0)
    world.finish("slow", "Passed", eval_loss=2.0)
    world.finish("wide", "Passed", eval_loss=3.0)
    world.evaluations = {
        "fast": EvaluationReport(dataset="s3://d/held.jsonl", bits_per_byte=0.9),
        "slow": EvaluationReport(dataset="s3://d/held.jsonl", bits_per_byte=0.7),
        "wide": EvaluationReport(dataset="s3://d/held.jsonl", bits_per_byte=0.7),
    }
    # wide and slow tie on bits per byte; slow's first profile is faster
    world.children[f"{NAME}-wide"]["status"]["benchmark"]["profiles"][0]["p95"] = 4.5
    world.settle()
    ranks = {e["name"]: e.get("rank") for e in world.status["leaderboard"]}
    assert ranks == {"slow": 1, "wide": 2, "fast": 3}
    assert world.promoted == [f"{NAME}-g1-slow"]


def test_latency_metric_ranks_by_the_first_profiles_gated_percentile() -> None:
    world = World(tournament(maxParallel=3, selection={"metric": "latency"}))
    world.settle()
    for candidate, p95 in (("fast", 5.0), ("slow", 3.0), ("wide", 4.0)):
        world.finish(candidate, "Passed")
        world.children[f"{NAME}-{candidate}"]["status"]["benchmark"]["profiles"][0]["p95"] = p95
    world.settle()
    assert world.status["winner"] == "slow"


def test_a_failed_candidate_does_not_fail_the_tournament() -> None:
    world = World(tournament(maxParallel=3))
    world.settle()
    world.finish("fast", "Failed", message="train failed: line 2")
    world.finish("slow", "Passed", eval_loss=1.5)
    world.finish("wide", "Passed", eval_loss=1.4)
    world.settle()
    assert world.status["phase"] == "Promoted"
    assert world.status["winner"] == "wide"


def test_no_candidate_passing_is_no_winner_with_each_reason() -> None:
    world = World(tournament(maxParallel=3))
    world.settle()
    world.finish("fast", "Failed", message="train failed: line 2")
    world.finish("slow", "Rejected", answer_p95=7.0, message="rejected: answer 7 s")
    world.finish("wide", "Rejected", answer_p95=8.0, message="rejected: answer 8 s")
    decisions = world.settle()
    status = world.status
    assert status["phase"] == "NoWinner"
    assert "fast: Failed (train failed: line 2)" in status["message"]
    assert "slow: Rejected (rejected: answer 7 s)" in status["message"]
    assert condition(status, "Stalled") == "True"
    assert world.promoted == []
    assert any(e.reason == "NoWinner" and e.type == "Warning" for d in decisions for e in d.events)
    assert world.step() == NOTHING


def test_a_champion_that_beats_the_winner_at_promotion_means_no_winner() -> None:
    world = World(tournament(maxParallel=3, promotion={"requireImprovement": True}))
    world.settle()
    for candidate in ("fast", "slow", "wide"):
        world.finish(candidate, "Passed")
    world.step()  # Selecting
    assert world.step().promote is not None
    lost = Verdict(False, "NoImprovement", "eval loss 1.2 does not beat the current model's 1.0")
    world.step(promotion_rejected=lost)
    assert world.status["phase"] == "NoWinner"
    assert "winner fast rejected at promotion" in world.status["message"]


def test_a_manual_tournament_waits_for_approval_of_its_generation() -> None:
    world = World(tournament(maxParallel=3, promotion={"policy": "manual"}))
    world.settle()
    for candidate in ("fast", "slow", "wide"):
        world.finish(
            candidate, "Passed", eval_loss={"fast": 1.3, "slow": 1.1, "wide": 1.2}[candidate]
        )
    world.settle()
    assert world.status["phase"] == "AwaitingApproval"
    assert world.status["winner"] == "slow"
    assert f'{APPROVE_ANNOTATION}="1"' in world.status["message"]
    assert tournament_state(world.obj, list(world.children.values())).settled
    assert world.promoted == []

    world.obj["metadata"]["annotations"][APPROVE_ANNOTATION] = "true"
    invalid = world.step()
    assert [e.reason for e in invalid.events] == ["InvalidApproval"]
    assert invalid.events[0].type == "Warning"
    assert world.status["phase"] == "AwaitingApproval"

    world.obj["metadata"]["annotations"][APPROVE_ANNOTATION] = "1"
    world.settle()
    assert world.promoted == [f"{NAME}-g1-slow"]
    assert world.status["phase"] == "Promoted"
    assert world.status["approvedGeneration"] == 1


def test_a_spec_edit_starts_generation_two_and_keeps_the_first_leaderboard() -> None:
    world = World(tournament(maxParallel=3))
    world.settle()
    for candidate in ("fast", "slow", "wide"):
        world.finish(candidate, "Passed")
    world.settle()
    assert world.status["phase"] == "Promoted"
    world.edit(template={**TEMPLATE, "dataset": {"uri": "s3://datasets/cerberus/v4.jsonl"}})
    world.settle()
    status = world.status
    assert status["observedGeneration"] == 2
    assert status["phase"] == "Running"
    assert status["runs"][0]["generation"] == 1
    assert status["runs"][0]["phase"] == "Promoted"
    assert status["runs"][0]["winner"] == "fast"
    assert len(status["runs"][0]["leaderboard"]) == 3
    assert "winner" not in status and "promotedModel" not in status
    for child in world.children.values():
        assert child["metadata"]["labels"][LABEL_ROUND] == "2"
        assert child["metadata"]["generation"] == 2  # the child's own new run
        assert child["spec"]["dataset"]["uri"] == "s3://datasets/cerberus/v4.jsonl"
    assert len(world.created) == 3  # updated, never created again


def test_an_edit_mid_run_updates_the_running_child_without_exceeding_max_parallel() -> None:
    world = World(tournament())
    world.settle()
    world.finish("fast", "Passed")
    world.settle()
    assert world.unsettled() == [f"{NAME}-slow"]
    world.edit(maxParallel=1, template={**TEMPLATE, "training": {"maxSteps": 8}})
    world.settle()
    # slow was running generation 1's spec: it is updated at once; nothing else starts
    assert world.unsettled() == [f"{NAME}-slow"]
    assert world.children[f"{NAME}-slow"]["metadata"]["labels"][LABEL_ROUND] == "2"
    assert world.children[f"{NAME}-fast"]["metadata"]["labels"][LABEL_ROUND] == "1"


def test_a_removed_candidate_is_deleted() -> None:
    world = World(tournament(maxParallel=3))
    world.settle()
    world.edit(candidates=CANDIDATES[:2])
    decisions = world.settle()
    assert f"{NAME}-wide" in decisions[0].delete
    assert f"{NAME}-wide" not in world.children


def test_children_of_another_tournament_object_are_not_adopted() -> None:
    world = World(tournament(maxParallel=3))
    world.settle()
    for child in world.children.values():
        child["metadata"]["ownerReferences"][0]["uid"] = "deleted-predecessor"
    state = tournament_state(world.obj, list(world.children.values()))
    assert state.children == {}


def test_an_invalid_spec_fails_the_tournament_and_creates_nothing() -> None:
    world = World(tournament(candidates=[{"name": "solo"}]))
    decision = world.step()
    assert decision.children == ()
    assert world.status["phase"] == "Failed"
    assert world.status["message"].startswith("invalid spec: spec.candidates:")
    assert condition(world.status, "Stalled") == "True"
    assert decision.events[0].type == "Warning"
