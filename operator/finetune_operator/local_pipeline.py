"""`finetune run FILE.yaml`: the FineTuneJob pipeline as local processes.

validate -> resolve -> choose the generation (local_runs.plan_run) -> config.json ->
`finetune train` -> `finetune benchmark` -> gate -> promote (or await approval), with the
run's status in status.json. The stages run as the same entrypoints the pods run, so a
local run writes exactly the tree a cluster run writes, in a directory or a bucket.

Ctrl-C (or SIGTERM) stops the running stage with SIGTERM (the trainer saves a checkpoint),
leaves the run unfinished and exits 130; running the same manifest again resumes it.
"""

from __future__ import annotations

import hashlib
import shlex
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from finetune_core.api import (
    Artifacts,
    BenchmarkReport,
    FineTuneJobSpec,
    FineTuneJobStatus,
    Metrics,
    Phase,
    ResolvedSpec,
    RunConfig,
)
from finetune_core.api import Progress as TrainingProgress
from finetune_core.gate import decide
from finetune_core.layout import ErrorReport, RunPaths, model_key
from finetune_core.manifest import InvalidManifest, Problem, load_documents, parse_manifest
from finetune_core.promotion import PromotionError, promote, read_champion, timestamp
from finetune_core.store import ArtifactStore, S3Store, StoreUnavailable, open_store
from finetune_operator.local_runs import (
    RunSnapshot,
    UnknownRun,
    last_checkpoint,
    latest_run,
    newest_of,
    plan_run,
    save_status,
    with_phase,
)
from finetune_operator.local_stages import (
    BenchmarkWatcher,
    Interruption,
    Stage,
    TrainingWatcher,
    Watcher,
    stage_env,
)
from finetune_operator.local_status import run_details

__all__ = ["approve_run", "run_manifest"]

LOCAL_NAMESPACE = "local"
EXIT_PROMOTED = 0
EXIT_FAILED = 1
EXIT_REJECTED = 2
PHASE_EXIT = {
    "Promoted": EXIT_PROMOTED,
    "AwaitingApproval": EXIT_PROMOTED,
    "Rejected": EXIT_REJECTED,
    "Failed": EXIT_FAILED,
}


@dataclass(frozen=True)
class LocalJob:
    """A validated manifest, ready to run here."""

    namespace: str
    name: str
    spec: ResolvedSpec
    dataset_sha256: str | None


def local_uri(uri: str, base: Path, field_path: str) -> tuple[str, list[Problem]]:
    """A dataset or prompts URI the stages can read: a path (relative to the manifest's
    folder) becomes an absolute file:// URI; s3:// is left to the stage."""
    if uri.startswith("s3://"):
        return uri, []
    path = Path(uri.removeprefix("file://")).expanduser()
    path = path if path.is_absolute() else (base / path).resolve()
    if not path.is_file():
        return uri, [Problem(field_path, f"no such file: {path}")]
    return f"file://{path}", []


def localize(spec: FineTuneJobSpec, base: Path) -> FineTuneJobSpec:
    """The spec with every local file made absolute; InvalidManifest names missing files."""
    dataset_uri, problems = local_uri(spec.dataset.uri, base, "spec.dataset.uri")
    profiles = []
    for index, profile in enumerate(spec.benchmark.sla):
        if profile.prompts is None:
            profiles.append(profile)
            continue
        prompts, missing = local_uri(profile.prompts, base, f"spec.benchmark.sla[{index}].prompts")
        problems += missing
        profiles.append(profile.model_copy(update={"prompts": prompts}))
    if problems:
        raise InvalidManifest(problems)
    return spec.model_copy(
        update={
            "dataset": spec.dataset.model_copy(update={"uri": dataset_uri}),
            "benchmark": spec.benchmark.model_copy(update={"sla": profiles}),
        }
    )


def load_job(path: Path) -> LocalJob:
    """Read, validate and resolve a one-job manifest; InvalidManifest on any problem."""
    try:
        documents = load_documents(path)
    except OSError as error:
        raise InvalidManifest([Problem("(file)", error.strerror or str(error))]) from None
    except yaml.YAMLError as error:
        raise InvalidManifest([Problem("(yaml)", " ".join(str(error).split()))]) from None
    if len(documents) != 1:
        found = f"{len(documents)} documents" if documents else "no document"
        raise InvalidManifest([Problem("(file)", f"expected one FineTuneJob, found {found}")])
    job = parse_manifest(documents[0])
    spec = localize(job.spec, path.resolve().parent).resolve()
    digest = None
    if spec.dataset.uri.startswith("file://"):
        with open(spec.dataset.uri.removeprefix("file://"), "rb") as data:
            digest = hashlib.file_digest(data, "sha256").hexdigest()
    return LocalJob(job.namespace or LOCAL_NAMESPACE, job.name, spec, digest)


# ------------------------------------------------------------------ the pipeline


@dataclass
class LocalRun:
    """One generation of a job going through the stages, with its status.json."""

    console: Console
    store: ArtifactStore
    run: RunPaths
    spec: ResolvedSpec
    status: FineTuneJobStatus
    env: dict[str, str]
    logs: Path
    interruption: Interruption
    manifest: Path
    endpoint: str | None

    def set_phase(self, phase: Phase, reason: str, message: str, **fields: Any) -> None:
        """Move to a phase (or stay, with a new message) and write status.json."""
        self.status = with_phase(self.status, phase, reason, message, datetime.now(UTC), **fields)
        save_status(self.store, self.run, self.status)

    def read(self, key: str, model: type[Any]) -> Any:
        raw = self.store.get_json_or_none(key)
        return None if raw is None else model.model_validate(raw)

    def artifacts(self) -> Artifacts:
        """URIs of what the run has produced so far."""
        store, run = self.store, self.run
        checkpoint = last_checkpoint(store, run)
        return Artifacts(
            run=store.uri(run.prefix),
            adapter=store.uri(run.adapter) if self.trained() else None,
            report=store.uri(run.report_html) if store.exists(run.report_html) else None,
            last_checkpoint=store.uri(checkpoint) if checkpoint else None,
        )

    def trained(self) -> bool:
        return self.store.exists(self.run.metrics) and any(self.store.list(self.run.adapter + "/"))

    def execute(self) -> int:
        """The remaining stages; the exit code of `finetune run`."""
        if not self.trained():
            self.store.delete(self.run.error)
            self.set_phase("Training", "Training", "training the LoRA adapter")
            code = self.run_stage("train", TrainingWatcher(self.console, self.store, self.run))
            if code is not None:
                return code
        metrics: Metrics | None = self.read(self.run.metrics, Metrics)
        self.status = self.status.model_copy(
            update={"metrics": metrics, "artifacts": self.artifacts()}
        )
        if not self.store.exists(self.run.benchmark_report):
            self.store.delete(self.run.error)
            self.set_phase("Benchmarking", "Benchmarking", "measuring latency per SLA profile")
            code = self.run_stage("benchmark", BenchmarkWatcher(self.console, self.spec))
            if code is not None:
                return code
        report: BenchmarkReport | None = self.read(self.run.benchmark_report, BenchmarkReport)
        if report is None:
            missing = f"no report at {self.store.uri(self.run.benchmark_report)}"
            return self.fail(ErrorReport(stage="benchmark", reason="NoReport", message=missing))
        return self.gate(metrics, report)

    def gate(self, metrics: Metrics | None, report: BenchmarkReport) -> int:
        """The promotion gate, then promotion (auto) or waiting for approval (manual)."""
        try:
            champion = read_champion(self.store, model_key(self.spec))
            verdict = decide(report, self.spec, metrics, champion, version=self.run.version)
            measured = {"benchmark": report, "sla": "Passed" if verdict.passed else "Failed"}
            if not verdict.passed:
                phase: Phase = "Rejected"
                reason, message = verdict.reason, verdict.message
            elif self.spec.promotion.policy == "manual":
                phase = reason = "AwaitingApproval"
                approve = approve_command(self.run, self.store, self.endpoint)
                message = f"{verdict.message}; promotion.policy is manual, approve with: {approve}"
            else:
                uri = promote(self.store, self.run, self.spec)
                phase = reason = "Promoted"
                message = f"{verdict.message}; promoted to {uri}"
                measured["promoted_model"] = uri
        except PromotionError as error:
            promotion = ErrorReport(stage="promote", reason="PromotionFailed", message=str(error))
            return self.fail(promotion)
        self.set_phase(phase, reason, message, artifacts=self.artifacts(), **measured)
        return self.summary()

    def summary(self) -> int:
        self.console.print()
        snapshot = RunSnapshot(self.run, load_run_config(self.store, self.run), self.status)
        self.console.print(run_details(self.store, snapshot))
        return PHASE_EXIT[self.status.phase or "Failed"]

    def run_stage(self, name: str, watcher: Watcher) -> int | None:
        """Run one stage to its end: None when it succeeded, else the exit code to return."""
        stage = Stage(name, self.store.uri(self.run.prefix), self.env, self.logs / f"{name}.log")
        self.console.print(f"[bold]{name}[/]: finetune {name} --run {stage.command[-1]}")
        code = stage.run(watcher, self.interruption)
        self.store.put_file(self.run.log(name), stage.log_path)
        if code is None or self.interruption.count:
            return self.interrupted(name)
        if code == 0:
            return None
        error: ErrorReport | None = self.read(self.run.error, ErrorReport)
        if error is None:  # it died before it could say why (killed, out of memory)
            exited = f"`finetune {name}` exited with code {code}"
            error = ErrorReport.model_validate(
                {"stage": name, "reason": "StageExited", "message": exited}
            )
        log_uri = self.store.uri(self.run.log(name))
        self.console.print(f"[red]Last output of {name}[/] (all of it: {log_uri}):")
        for line in stage.tail:
            self.console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)
        return self.fail(error)

    def fail(self, error: ErrorReport) -> int:
        if not self.store.exists(self.run.error):
            self.store.put_json(self.run.error, error.to_wire())
        message = f"{error.stage} failed ({error.reason}): {error.message}"
        self.set_phase("Failed", error.reason, message, artifacts=self.artifacts())
        return self.summary()

    def interrupted(self, stage: str) -> int:
        phase = self.status.phase or "Training"
        where = ""
        progress: TrainingProgress | None = self.read(self.run.progress, TrainingProgress)
        if stage == "train" and progress is not None and progress.step is not None:
            where = f" at step {progress.step}/{progress.total_steps}"
        message = f"{stage} interrupted{where}; run `finetune run {self.manifest}` again to resume"
        self.set_phase(phase, "Interrupted", message, progress=progress, artifacts=self.artifacts())
        self.console.print(f"[yellow]{message}[/]")
        return self.interruption.exit_code


def approve_command(run: RunPaths, store: ArtifactStore, endpoint: str | None) -> str:
    """The command line that approves a run (printed for the user, never executed)."""
    words = ["finetune", "approve", f"{run.namespace}/{run.name}", "--store", store.uri()]
    if endpoint:
        words += ["--s3-endpoint", endpoint]
    return shlex.join(words)


def load_run_config(store: ArtifactStore, run: RunPaths) -> RunConfig:
    return RunConfig.model_validate(store.get_json(run.config))


# ------------------------------------------------------------------ entry points


def print_problems(console: Console, path: Path, problems: list[Problem]) -> None:
    for problem in problems:
        console.print(f"{path}: {problem}", markup=False, highlight=False)


def run_manifest(path: Path, store: str | None, endpoint: str | None) -> int:
    """`finetune run`: exit 0 promoted or awaiting approval, 2 rejected, 1 failed,
    130 interrupted (resume by running it again)."""
    console = Console()
    try:
        job = load_job(path)
    except InvalidManifest as invalid:
        print_problems(console, path, invalid.problems)
        return EXIT_FAILED
    try:
        artifacts = open_store(store, endpoint)
        if isinstance(artifacts, S3Store):
            artifacts.ensure_bucket()
        return _run(console, path, job, artifacts, endpoint)
    except StoreUnavailable as error:
        console.print(f"[red]The artifact store is unreachable:[/] {error}")
        return EXIT_FAILED


def _run(
    console: Console, path: Path, job: LocalJob, store: ArtifactStore, endpoint: str | None
) -> int:
    latest = latest_run(store, job.namespace, job.name)
    plan = plan_run(job.spec, latest, job.dataset_sha256)
    run = RunPaths(job.namespace, job.name, plan.generation)
    console.print(f"[bold]{job.namespace}/{job.name}[/] generation {plan.generation}: {plan.why}")
    console.print(f"store: {store.uri()}")
    if plan.action == "report":
        assert latest is not None
        console.print(run_details(store, latest))
        return PHASE_EXIT[latest.status.phase or "Failed"]
    if plan.action == "start":
        now = datetime.now(UTC)
        config = RunConfig(
            namespace=job.namespace,
            name=job.name,
            generation=plan.generation,
            spec=job.spec,
            created_at=now,
        )
        store.put_json(run.config, config.to_wire())
        status = FineTuneJobStatus(
            phase="Pending",
            observed_generation=plan.generation,
            model=job.spec.model_id,
            started_at=timestamp(now),
        )
    else:
        assert latest is not None
        status = latest.status
    with (
        tempfile.TemporaryDirectory(prefix="finetune-logs-") as logs,
        Interruption().installed() as interruption,
    ):
        local = LocalRun(
            console,
            store,
            run,
            job.spec,
            status,
            stage_env(store, endpoint),
            Path(logs),
            interruption,
            path,
            endpoint,
        )
        return local.execute()


def approve_run(name: str, store: str | None, endpoint: str | None) -> int:
    """`finetune approve [NAMESPACE/]NAME`: promote a run that passed the gate and waits for
    approval (promotion.policy: manual), as the approve annotation does in a cluster."""
    console = Console()
    artifacts = open_store(store, endpoint)
    try:
        snapshot = newest_of(artifacts, name)
    except UnknownRun as unknown:
        console.print(f"[red]{unknown}[/]", highlight=False)
        return EXIT_FAILED
    run, status = snapshot.paths, snapshot.status
    if status.phase != "AwaitingApproval":
        console.print(
            f"[red]{run.namespace}/{run.name} generation {run.generation} is {status.phase}; "
            "only a run in AwaitingApproval can be approved[/]"
        )
        return EXIT_FAILED
    try:
        uri = promote(artifacts, run, snapshot.config.spec)
    except PromotionError as error:
        console.print(f"[red]Promotion failed:[/] {error}")
        return EXIT_FAILED
    status = with_phase(
        status,
        "Promoted",
        "Approved",
        f"approved; promoted to {uri}",
        datetime.now(UTC),
        promoted_model=uri,
    )
    save_status(artifacts, run, status)
    console.print(run_details(artifacts, RunSnapshot(run, snapshot.config, status)))
    return EXIT_PROMOTED
