"""Prometheus metrics of the operator: runs started and how they ended, jobs by phase."""

from __future__ import annotations

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
        self._publish()

    def observe(self, namespace: str, name: str, phase: str | None, moved: bool) -> None:
        """Record a job's phase after a reconcile; `moved` when it just transitioned there."""
        if moved and phase in self._transitions:
            self._transitions[phase].inc()
        if phase is not None:
            self._phases[(namespace, name)] = phase
            self._publish()

    def forget(self, namespace: str, name: str) -> None:
        if self._phases.pop((namespace, name), None) is not None:
            self._publish()

    def _publish(self) -> None:
        counts = dict.fromkeys(PHASES, 0)
        for phase in self._phases.values():
            counts[phase] = counts.get(phase, 0) + 1
        for phase, count in counts.items():
            self._jobs.labels(phase=phase).set(count)
