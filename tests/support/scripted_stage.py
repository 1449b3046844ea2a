"""A stage process that plays `finetune train|benchmark --run URI` from a script: it writes
the files the real stage writes for a scenario and exits as the real stage would.

    python -m tests.support.scripted_stage SCENARIO STAGE --run URI

Scenarios: `passes` (trained; every SLA met), `passes-merged` (the same, and the merged
model for promotion.export: merged), `slow-answer` (the answer profile's p95 is
7.25 s against its 6 s limit), `bad-dataset` (training fails on line 2 of the dataset,
exit code 3, as the trainer does), `slow-then-fast` (round 1 of the benchmark is slow as in
`slow-answer`, a re-benchmark round meets every SLA). The benchmark round comes from
FINETUNE_BENCHMARK_ROUND, as `finetune benchmark` reads it.
"""

from __future__ import annotations

import os
import sys

from finetune_core.exit_codes import EXIT_INVALID_INPUT, EXIT_OK
from finetune_core.layout import ROUND_ENV, RunPaths
from finetune_core.store import open_run
from tests.support import stage_files

SCENARIOS = ("passes", "passes-merged", "slow-answer", "bad-dataset", "slow-then-fast")
BAD_LINE = "line 2: expected a JSON object with a 'messages' list"


def play(scenario: str, stage: str, run_uri: str, round: int | None = None) -> int:
    """`scenario[:EVAL_LOSS]`: with an eval loss, training reports it and the benchmark
    writes report/evaluation.json with bits per byte proportional to it."""
    scenario, _, loss = scenario.partition(":")
    eval_loss = float(loss) if loss else 1.21
    store, prefix = open_run(run_uri)
    run = RunPaths.from_prefix(prefix)
    if stage == "train":
        if scenario == "bad-dataset":
            stage_files.failed(store, run, "validate", "InvalidDataset", BAD_LINE)
            return EXIT_INVALID_INPUT
        stage_files.trained(store, run, eval_loss)
        return EXIT_OK
    round = round or int(os.environ.get(ROUND_ENV) or 1)
    slow = scenario == "slow-answer" or (scenario == "slow-then-fast" and round == 1)
    stage_files.benchmarked(store, run, answer_p95=7.25 if slow else 2.5, round=round)
    if loss:
        stage_files.evaluated(store, run, eval_loss, bits_per_byte=eval_loss / 4)
    if scenario == "passes-merged":
        stage_files.merged(store, run)
    return EXIT_OK


def main(argv: list[str]) -> int:
    scenario, stage, flag, run_uri = argv
    assert (
        scenario.partition(":")[0] in SCENARIOS
        and stage in ("train", "benchmark")
        and flag == "--run"
    )
    return play(scenario, stage, run_uri)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
