"""Prometheus metrics of the operator: runs started and how they ended, jobs by phase."""

from __future__ import annotations

from collections.abc import Sequence
from typing import get_args

from prometheus_client import CollectorRegistry, Counter, Gauge

from finetune_core.api import Phase

PHASES: tuple[str, ...] = get_args(Phase)


class OperatorMetrics:
    """Counters move on phase transitions; the gauge counts FineTuneJobs by the phase of
    their current run. A registry of its own, so that several operators (tests) coexist."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        self._transitions = {
            "Validating": Counter(
                "finetune_runs_started",
                "Runs whose spec validated and that started.",
                registry=self.registry,
            ),
            "Promoted": Counter(
                "finetune_runs_promoted",
                "Runs whose model was promoted.",
                registry=self.registry,
            ),
            "Passed": Counter(
                "finetune_runs_passed",
                "Runs that met their gate and, with promotion.policy none, were not promoted.",
                registry=self.registry,
            ),
            "Rejected": Counter(
                "finetune_runs_rejected",
                "Runs the promotion gate rejected.",
                registry=self.registry,
            ),
            "Failed": Counter(
                "finetune_runs_failed",
                "Runs that failed (invalid spec, failed Job, ...).",
                registry=self.registry,
            ),
        }
        self._jobs = Gauge(
            "finetune_jobs",
            "FineTuneJobs by the phase of their current run.",
            ["phase"],
            registry=self.registry,
        )
        self._phases: dict[tuple[str, str], str] = {}
        for phase in PHASES:
            self._jobs.labels(phase=phase).set(0)

    def observe(
        self, namespace: str, name: str, phase: str | None, moved: Sequence[str] = ()
    ) -> None:
        """Record a job's phase after a reconcile, and the phases it just moved into."""
        for reached in moved:
            if reached in self._transitions:
                self._transitions[reached].inc()
        if phase is not None:
            self._move((namespace, name), phase)

    def forget(self, namespace: str, name: str) -> None:
        self._move((namespace, name), None)

    def _move(self, key: tuple[str, str], phase: str | None) -> None:
        """Move one job between the gauge's phases (not a recount of every job: this runs
        on every reconcile, with thousands of jobs)."""
        before = self._phases.pop(key, None)
        if phase is not None:
            self._phases[key] = phase
        if before != phase:
            if before is not None:
                self._jobs.labels(phase=before).dec()
            if phase is not None:
                self._jobs.labels(phase=phase).inc()
