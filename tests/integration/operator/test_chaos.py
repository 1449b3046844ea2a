"""A small, seeded run of the chaos suite (benchmarks/chaos.py): concurrent lifecycles, the
operator process SIGKILLed at drawn moments, with and without API faults. Every
FineTuneJob must reach its scenario's terminal phase, with one Job per stage and every
promoted alias pointing at a complete copy."""

from __future__ import annotations

from pathlib import Path

from benchmarks.chaos import ChaosConfig, run_chaos

SEED = 20261126


def small(**changes: object) -> ChaosConfig:
    """A run small enough for the suite: short stages, kills soon after start-up."""
    settings: dict[str, object] = {
        "seed": SEED,
        "stage_seconds": (0.5, 4.0),
        "kill_after_leading": (0.0, 1.0),
        "kill_after_start": (0.0, 2.5),
        **changes,
    }
    return ChaosConfig(**settings)  # type: ignore[arg-type]


async def test_lifecycles_converge_through_operator_kills(s3_endpoint: str, tmp_path: Path) -> None:
    config = small(lifecycles=5, kills=20)
    result = await run_chaos(config, tmp_path, s3_endpoint)
    report = "\n".join(result.lines())
    print(report)
    assert result.converged, report
    assert result.kills == 20
    assert result.jobs_created == 9  # 5 scenarios: two fail in training


async def test_lifecycles_converge_through_kills_and_api_faults(
    s3_endpoint: str, tmp_path: Path
) -> None:
    config = small(lifecycles=4, kills=6, seed=SEED + 1, fault_rate=0.1)
    result = await run_chaos(config, tmp_path, s3_endpoint)
    report = "\n".join(result.lines())
    print(report)
    assert result.converged, report
    assert sum(result.faults.values()) > 0
