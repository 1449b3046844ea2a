"""benchmarks/operator_scale.py with three FineTuneJobs on the emulator, so the script that
measures the operator at scale keeps working between measurements. Latencies and CPU seconds
are what the script prints, never a test's verdict; the API writes per lifecycle are counts
(the issue's budget is 12) and a settled operator writes nothing but its Lease."""

from __future__ import annotations

import re

from benchmarks.operator_scale import admission_cost, admission_seconds
from finetune_operator.builders import LABEL_JOB, LABEL_STAGE
from tests.integration.benchmark.test_trainer_benchmarks import run_script


def test_operator_scale_runs_three_lifecycles_and_counts_their_writes() -> None:
    printed = run_script(
        "operator_scale.py",
        "--count",
        "3",
        "--stage-seconds",
        "0.4",
        "--settled-seconds",
        "2",
        "--progress-interval",
        "1",
        "--timeout",
        "300",
    )
    assert "all Promoted after" in printed
    assert re.search(r"create -> training Job: p50 [\d.]+ s, .*\(n=3\)", printed), printed
    assert re.search(r"training done -> benchmark Job: p50 [\d.]+ s, .*\(n=3\)", printed)
    burst = re.search(
        r"admission burst, 3 training Jobs in [\d.]+ s: CPU ms .*: (.*); together", printed
    )
    assert burst is not None, printed
    assert {part.rsplit(" ", 1)[0] for part in burst.group(1).split(", ")} == {
        "operator",
        "emulator",
        "this script",
    }, printed
    writes = re.search(r"API writes per lifecycle: ([\d.]+) \((.*)\)", printed)
    assert writes is not None, printed
    assert float(writes.group(1)) <= 12, printed
    assert "CREATE jobs 2.00" in writes.group(2)  # a training and a benchmark Job, once each
    assert "CREATE events" in writes.group(2)
    settled = re.search(r"settled: .* API writes (\d+) \((.*)\)", printed)
    assert settled is not None, printed
    assert all("leases" in kind for kind in settled.group(2).split(", ") if kind), printed


def audited(verb: str, resource: str, at: str, code: int = 201, **meta: object) -> dict:
    return {
        "stage": "ResponseComplete",
        "verb": verb,
        "objectRef": {"resource": resource, "namespace": "ml"},
        "responseStatus": {"code": code},
        "requestObject": {"metadata": meta},
        "stageTimestamp": at,
    }


def test_admission_latency_is_read_from_the_api_servers_own_times() -> None:
    """Only created FineTuneJobs and their training Jobs count: not a benchmark Job, not a
    create the server refused, not a FineTuneJob whose training Job never came."""
    train = {LABEL_JOB: "a", LABEL_STAGE: "train"}
    audit = [
        audited("create", "finetunejobs", "2026-11-27T06:00:00.250000Z", name="a"),
        audited("create", "finetunejobs", "2026-11-27T06:00:00.500000Z", name="b"),
        audited("create", "jobs", "2026-11-27T06:00:01.000000Z", 409, labels=train),
        audited("create", "jobs", "2026-11-27T06:00:01.750000Z", labels=train),
        audited("create", "jobs", "2026-11-27T06:00:09Z", labels={**train, LABEL_STAGE: "bench"}),
        audited("patch", "jobs", "2026-11-27T06:00:02Z", labels=train),
    ]
    assert admission_seconds(audit) == [1.5]


def test_admission_cost_is_per_object_admitted_and_a_share_of_every_core() -> None:
    before = {"operator": 10.0, "kube-apiserver": 20.0}
    after = {"operator": 11.2, "kube-apiserver": 21.8}
    line = admission_cost(before, after, admitted=100, seconds=2.0, cores=2)
    assert "100 training Jobs in 2.0 s" in line
    assert "operator 12.0, kube-apiserver 18.0; together 30.0 ms" in line
    assert line.endswith("75 % of 2 cores")
