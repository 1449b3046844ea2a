"""A stage process that plays `finetune train|benchmark --run URI` from a script: it writes
the files the real stage writes for a scenario and exits as the real stage would.

    python -m tests.support.scripted_stage SCENARIO STAGE --run URI

Scenarios: `passes` (trained; every SLA met), `passes-merged` (the same, and the merged
model for promotion.export: merged), `slow-answer` (the answer profile's p95 is
7.25 s against its 6 s limit), `bad-dataset` (training fails on line 2 of the dataset,
exit code 3, as the trainer does).
"""

from __future__ import annotations

import sys

from finetune_core.exit_codes import EXIT_INVALID_INPUT, EXIT_OK
from finetune_core.layout import RunPaths
from finetune_core.store import open_run
from tests.support import stage_files

SCENARIOS = ("passes", "passes-merged", "slow-answer", "bad-dataset")
BAD_LINE = "line 2: expected a JSON object with a 'messages' list"


def play(scenario: str, stage: str, run_uri: str) -> int:
    store, prefix = open_run(run_uri)
    run = RunPaths.from_prefix(prefix)
    if stage == "train":
        if scenario == "bad-dataset":
            stage_files.failed(store, run, "validate", "InvalidDataset", BAD_LINE)
            return EXIT_INVALID_INPUT
        stage_files.trained(store, run)
        return EXIT_OK
    stage_files.benchmarked(store, run, answer_p95=7.25 if scenario == "slow-answer" else 2.5)
    if scenario == "passes-merged":
        stage_files.merged(store, run)
    return EXIT_OK


def main(argv: list[str]) -> int:
    scenario, stage, flag, run_uri = argv
    assert scenario in SCENARIOS and stage in ("train", "benchmark") and flag == "--run"
    return play(scenario, stage, run_uri)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
