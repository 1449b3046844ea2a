"""Where a run's files live in the store, and the JSON files the stages exchange.

The layout is a contract between the operator, the pods and users browsing the bucket:
    runs/<namespace>/<name>/g<generation>/{config,progress,metrics,error}.json
    runs/.../checkpoints/step-<N>/   adapter/   merged/   report/benchmark.json
    runs/.../report/evaluation.json   report/index.html
    runs/.../report/rounds/<k>/      every benchmark round's report (report/ is the latest)
    models/<namespace>/<alias>/<name>-g<generation>/   models/<namespace>/<alias>/current.json
    tournaments/<namespace>/<name>/g<generation>/report/{leaderboard.json,index.html}
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from finetune_core.api import ApiModel, ResolvedSpec, StatusModel
from finetune_core.presets import PRESETS

CHECKPOINT_COMPLETE_MARKER = "COMPLETE"
# The benchmark round a stage measures (`finetune benchmark --round`): a local executor sets
# it in the stage process's environment, a Job passes --round.
ROUND_ENV = "FINETUNE_BENCHMARK_ROUND"


@dataclass(frozen=True)
class StoredCheckpoints:
    """Steps of the checkpoints found in the store, split by whether they are complete."""

    complete: list[int]
    incomplete: list[int]

    @property
    def newest(self) -> int | None:
        return self.complete[-1] if self.complete else None


def scan_checkpoints(keys: Iterable[str], checkpoints_prefix: str) -> StoredCheckpoints:
    """Which checkpoints the keys under `checkpoints_prefix` hold, each list sorted."""
    pattern = re.compile(re.escape(checkpoints_prefix.rstrip("/")) + r"/step-(\d+)/(.+)")
    seen: set[int] = set()
    marked: set[int] = set()
    for key in keys:
        match = pattern.fullmatch(key)
        if match:
            step = int(match[1])
            seen.add(step)
            if match[2] == CHECKPOINT_COMPLETE_MARKER:
                marked.add(step)
    return StoredCheckpoints(sorted(marked), sorted(seen - marked))


@dataclass(frozen=True)
class RunPaths:
    """Keys of one run's files, relative to the store root."""

    namespace: str
    name: str
    generation: int

    @classmethod
    def from_prefix(cls, prefix: str) -> RunPaths:
        match = re.fullmatch(r"runs/([^/]+)/([^/]+)/g(\d+)/?", prefix)
        if not match:
            raise ValueError(f"{prefix!r} is not a run prefix (runs/<ns>/<name>/g<N>)")
        return cls(match[1], match[2], int(match[3]))

    @property
    def prefix(self) -> str:
        return f"runs/{self.namespace}/{self.name}/g{self.generation}"

    @property
    def config(self) -> str:
        return f"{self.prefix}/config.json"

    @property
    def progress(self) -> str:
        return f"{self.prefix}/progress.json"

    @property
    def metrics(self) -> str:
        return f"{self.prefix}/metrics.json"

    @property
    def error(self) -> str:
        return f"{self.prefix}/error.json"

    @property
    def status(self) -> str:
        """status.json: the local pipeline's FineTuneJobStatus (a cluster keeps it in the CR)."""
        return f"{self.prefix}/status.json"

    def log(self, stage: str) -> str:
        """A stage's captured output in a local run (logs/train.log, logs/benchmark.log)."""
        return f"{self.prefix}/logs/{stage}.log"

    @property
    def checkpoints(self) -> str:
        return f"{self.prefix}/checkpoints"

    def checkpoint(self, step: int) -> str:
        return f"{self.checkpoints}/step-{step}"

    @property
    def adapter(self) -> str:
        return f"{self.prefix}/adapter"

    @property
    def report(self) -> str:
        return f"{self.prefix}/report"

    @property
    def benchmark_report(self) -> str:
        return f"{self.report}/benchmark.json"

    @property
    def report_html(self) -> str:
        return f"{self.report}/index.html"

    def round_report(self, round: int) -> str:
        """Where benchmark round `round` keeps its report (report/ holds the latest round's)."""
        return f"{self.report}/rounds/{round}"

    def round_benchmark_report(self, round: int) -> str:
        """A round's benchmark.json, written last: once it exists, the round is complete."""
        return f"{self.round_report(round)}/benchmark.json"

    @property
    def evaluation(self) -> str:
        """report/evaluation.json: held-out loss, bits per byte, review answers and scores."""
        return f"{self.report}/evaluation.json"

    @property
    def merged(self) -> str:
        """The base model with the adapter merged (promotion.export: merged), safetensors in
        the Hugging Face layout, written by the benchmark stage."""
        return f"{self.prefix}/merged"

    def superseded(self, uid: str) -> str:
        """Where a run directory written for another object of the same name (deleted and
        created again) is moved, so that nothing is lost and nothing is read by mistake."""
        return f"runs/{self.namespace}/{self.name}/superseded/{uid}/g{self.generation}"

    @property
    def version(self) -> str:
        """The name a promoted copy of this run gets (unique within its namespace)."""
        return f"{self.name}-g{self.generation}"


@dataclass(frozen=True)
class TournamentPaths:
    """Keys of one generation of a tournament: its leaderboard and HTML report."""

    namespace: str
    name: str
    generation: int

    @property
    def prefix(self) -> str:
        return f"tournaments/{self.namespace}/{self.name}/g{self.generation}"

    @property
    def report(self) -> str:
        return f"{self.prefix}/report"

    @property
    def leaderboard(self) -> str:
        return f"{self.report}/leaderboard.json"

    @property
    def report_html(self) -> str:
        return f"{self.report}/index.html"

    def version(self, candidate: str) -> str:
        """The name the winner's promoted copy gets: <tournament>-g<gen>-<candidate>."""
        return f"{self.name}-g{self.generation}-{candidate}"


def model_key(spec: ResolvedSpec) -> str:
    """The default alias of a base model: the preset's name while the preset's own model is
    trained, else the full model id made a path segment (`{preset: phi-4, name:
    meta-llama/Llama-3.1-8B}` trains Llama, so it must not land under phi-4)."""
    if spec.preset and spec.model_id == PRESETS[spec.preset].model_id:
        return spec.preset
    return re.sub(r"[^a-z0-9._-]+", "-", spec.model_id.strip("/").lower()).strip("-.")


@dataclass(frozen=True)
class AliasPaths:
    """Keys of one namespace's alias: `models/<namespace>/<alias>/`, its promoted versions
    and `current.json`. Each namespace has its own aliases: one team cannot replace
    another's model."""

    namespace: str
    alias: str

    @property
    def prefix(self) -> str:
        return f"models/{self.namespace}/{self.alias}"

    @property
    def current(self) -> str:
        return f"{self.prefix}/current.json"

    @property
    def legacy_current(self) -> str:
        """Where the alias was kept before aliases were per namespace (read, never written)."""
        return f"models/{self.alias}/current.json"

    def version_dir(self, version: str) -> str:
        return f"{self.prefix}/{version}"


def alias_of(spec: ResolvedSpec, namespace: str) -> AliasPaths:
    """The alias a run of `spec` in `namespace` is promoted to: promotion.alias, else the
    model key."""
    return AliasPaths(namespace, spec.promotion.alias or model_key(spec))


class ErrorReport(ApiModel):
    """error.json: why a stage failed."""

    stage: Literal["validate", "train", "benchmark", "promote"]
    reason: str = Field(description="CamelCase reason, e.g. InvalidDataset.")
    message: str


class CurrentAlias(StatusModel):
    """models/<namespace>/<alias>/current.json: which version is current, and which were
    before (newest first). Unknown keys are ignored, so a newer writer does not break an
    older reader."""

    version: str
    uri: str
    promoted_at: str
    eval_loss: float | None = None
    action: Literal["promote", "rollback"] = "promote"
    previous: list[dict[str, object]] = Field(default_factory=list)
