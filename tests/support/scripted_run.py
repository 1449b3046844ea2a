"""`finetune run` of one FineTuneJob whose stages are scripted (tests.support.scripted_stage):
what a local tournament starts for each candidate, in tests.

    python -m tests.support.scripted_run SCENARIOS MANIFEST --store STORE [--s3-endpoint URL]

SCENARIOS is a JSON object from job name to scenario (`passes:1.3`, `slow-answer`, ...).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from finetune_cli.local.executor import run_manifest
from finetune_core.lifecycle import StageName


def main(argv: list[str]) -> int:
    scenarios, manifest, flag, store, *rest = argv
    assert flag == "--store"
    endpoint = rest[1] if rest[:1] == ["--s3-endpoint"] else None
    job = Path(manifest).stem
    scenario = json.loads(scenarios)[job]

    def command(stage: StageName, run_uri: str) -> list[str]:
        module = "tests.support.scripted_stage"
        return [sys.executable, "-m", module, scenario, stage, "--run", run_uri]

    return run_manifest(Path(manifest), store, endpoint, command)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
