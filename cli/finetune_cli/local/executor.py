"""`finetune run FILE.yaml`: the lifecycle (finetune_core.lifecycle) carried out here.

The same decisions the operator carries out in a cluster, with local means: a stage is a
child process running the pods' own entrypoint (`finetune train|benchmark --run URI`), the
status is the run's status.json, an Event is a console line. So a local run writes exactly
the tree, and reaches exactly the phases, conditions and messages, that a cluster run does.

Ctrl-C (or SIGTERM) stops the running stage with SIGTERM (the trainer saves a checkpoint),
leaves the run unfinished and exits 130; running the same manifest again resumes it.
"""

from __future__ import annotations

import shlex
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from finetune_cli.local.generations import choose_generation
from finetune_cli.local.lock import RunLocked, run_lock
from finetune_cli.local.manifest import LocalJob, load_job, print_problems
from finetune_cli.local.processes import (
    POLL_SECONDS,
    BenchmarkWatcher,
    Interruption,
    StageProcess,
    TrainingWatcher,
    Watcher,
    stage_env,
)
from finetune_cli.local.settings import InvalidSetting, LocalSettings
from finetune_cli.local.view import named_run, run_details
from finetune_core.api import Progress, Reason, RunConfig
from finetune_core.clock import timestamp
from finetune_core.exit_codes import EXIT_FAILED, PHASE_EXIT
from finetune_core.layout import ROUND_ENV, RunPaths, alias_of
from finetune_core.lifecycle import (
    REBENCHMARKABLE,
    Decision,
    Event,
    Observation,
    Prune,
    RunState,
    StageName,
    StageState,
    decide,
    interrupted,
    merge_patch,
    parse_status,
    reads,
    resume,
    stage_name,
)
from finetune_core.manifest import InvalidManifest
from finetune_core.promotion import ChampionChanged, PromotionError, promote
from finetune_core.retention import prune_runs
from finetune_core.run_files import read_run_files, stage_finished
from finetune_core.runs import RunSnapshot, latest_run, new_run_config, save_status
from finetune_core.store import (
    ArtifactStore,
    S3Store,
    StoreUnavailable,
    open_store,
    read_model_if_valid,
)

__all__ = ["approve_run", "rebenchmark_run", "run_manifest"]

StageCommand = Callable[[StageName, str], list[str]]


def _moment(moment: datetime | None) -> str | None:
    return None if moment is None else timestamp(moment)


def finetune_command(stage: StageName, run_uri: str) -> list[str]:
    """The pods' entrypoint, run with this interpreter."""
    return [sys.executable, "-m", "finetune_cli", stage, "--run", run_uri]


@dataclass
class LocalExecutor:
    """Carries out the lifecycle's decisions for one generation of a job until it settles."""

    console: Console
    store: ArtifactStore
    job: LocalJob
    generation: int
    raw_status: dict[str, Any]
    env: dict[str, str]
    logs: Path
    interruption: Interruption
    endpoint: str | None = None
    approved: bool = False
    rebenchmark: str | None = None  # a rebenchmark request, as the annotation's value
    command: StageCommand = finetune_command
    settings: LocalSettings = field(default_factory=LocalSettings)

    def __post_init__(self) -> None:
        # The newest process of each stage, by the stage name it runs as.
        self.processes: dict[StageName, tuple[str, StageProcess]] = {}

    @property
    def paths(self) -> RunPaths:
        return RunPaths(self.job.namespace, self.job.name, self.generation)

    # ---------------------------------------------------------------- observe

    def state(self) -> RunState:
        return RunState(
            namespace=self.job.namespace,
            name=self.job.name,
            generation=self.generation,
            uid=self.job.uid,
            spec=self.job.spec,
            gpus=self.job.gpus,
            raw_status=self.raw_status,
            approval=str(self.generation) if self.approved else None,
            rebenchmark=self.rebenchmark,
            train=self.stage_state("train"),
            bench=self.stage_state("benchmark"),
            price=self.settings.price,
            keep_generations=self.settings.keep_generations,
        )

    @property
    def round(self) -> int:
        """The benchmark round the status names (1 until a re-benchmark)."""
        return RunState(
            self.job.namespace, self.job.name, self.generation, None, raw_status=self.raw_status
        ).benchmark_round

    def stage_state(self, stage: StageName) -> StageState | None:
        """A stage of this invocation by its process; one of an earlier invocation (resumed
        or retried) only by the result it left in the store."""
        round = self.round if stage == "benchmark" else 1
        name = stage_name(self.job.name, self.generation, stage, round)
        ran, process = self.processes.get(stage, ("", None))
        if process is not None and ran == name:
            code = process.poll()
            started, ended = _moment(process.started_at), _moment(process.finished_at)
            if code is None:
                return StageState(name, "running", ready=True, started_at=started)
            if code == 0:
                return StageState(name, "succeeded", started_at=started, finished_at=ended)
            exited = f"`finetune {stage}` exited with code {code}"
            return StageState(
                name,
                "failed",
                reason=Reason.STAGE_EXITED,
                message=exited,
                started_at=started,
                finished_at=ended,
            )
        if self.finished_before(stage, round):
            return StageState(name, "succeeded")
        return None

    def finished_before(self, stage: StageName, round: int = 1) -> bool:
        return stage_finished(self.store, self.paths, stage, round)

    def observe(self) -> Observation:
        state = self.state()
        files = read_run_files(self.store, self.paths, reads(state), self.endpoint, self.job.uid)
        return Observation(state=state, run_uri=self.store.uri(self.paths.prefix), files=files)

    # ---------------------------------------------------------------- act and record

    def execute(self, first: Decision | None = None) -> int:
        """Observe, decide, act, record until the run settles; `finetune run`'s exit code."""
        if first is not None:
            self.record(first)
        while True:
            observation = self.observe()
            decision = decide(observation, datetime.now(UTC))
            if decision.promote:
                decision = decide(self.promote(observation), datetime.now(UTC))
            if decision.create is not None:
                self.start(decision.create, decision.round)
            self.record(decision)
            if decision.prune is not None:
                self.prune(decision.prune)
            if decision.requeue or decision.create is not None:
                continue
            running = [(stage, p) for stage, (_, p) in self.processes.items() if p.code is None]
            if running:
                stage, process = running[0]
                if self.interruption.count:
                    return self.stop(stage, process)
                time.sleep(POLL_SECONDS)
                continue
            if self.state().settled:
                return self.summary()
            if not decision.status:
                raise AssertionError(f"the run made no progress at {self.state().step}")

    def start(self, stage: StageName, round: int = 1) -> None:
        """Start a stage (a stale error.json of an earlier try would explain nothing now)."""
        self.store.delete(self.paths.error)
        run_uri = self.store.uri(self.paths.prefix)
        env = dict(self.env)
        log: str = stage
        if stage == "benchmark" and round > 1:
            env[ROUND_ENV] = str(round)
            log = f"{stage}-r{round}"
        watcher: Watcher = (
            TrainingWatcher(self.console, self.store, self.paths)
            if stage == "train"
            else BenchmarkWatcher(self.console, self.job.spec)
        )
        process = StageProcess(
            self.command(stage, run_uri),
            env,
            self.logs / f"{log}.log",
            watcher,
            on_exit=lambda ended, code: self.stage_ended(stage, log, ended, code),
        )
        shown = f"finetune {stage} --run {run_uri}" + (f" --round {round}" if round > 1 else "")
        self.console.print(f"[bold]{stage}[/]: {shown}", highlight=False)
        process.start()
        self.processes[stage] = (stage_name(self.job.name, self.generation, stage, round), process)

    def stage_ended(self, stage: StageName, log: str, process: StageProcess, code: int) -> None:
        """Keep the stage's output beside the run; show its last lines when it failed."""
        self.store.put_file(self.paths.log(log), process.log_path)
        if code == 0 or self.interruption.count:
            return
        log_uri = self.store.uri(self.paths.log(log))
        self.console.print(f"[red]Last output of {stage}[/] (all of it: {log_uri}):")
        for line in process.tail:
            self.console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)

    def stop(self, stage: StageName, process: StageProcess) -> int:
        """Ctrl-C: stop the stage, record where it stood, and say how to go on."""
        process.stop(self.interruption)
        progress = read_model_if_valid(self.store, self.paths.progress, Progress)
        where = ""
        if stage == "train" and progress is not None and progress.step is not None:
            where = f" at step {progress.step}/{progress.total_steps}"
        message = (
            f"{stage} interrupted{where}; run `finetune run` with the same manifest again to resume"
        )
        self.record(interrupted(self.state(), datetime.now(UTC), message, progress))
        return self.interruption.exit_code

    def prune(self, prune: Prune) -> None:
        """Retention, as the operator does it: older generations' run directories go."""
        alias = alias_of(self.job.spec, self.job.namespace)
        for generation in prune_runs(self.store, self.paths, alias, prune):
            self.console.print(
                f"retention: removed generation {generation}'s run directory", highlight=False
            )

    def promote(self, observation: Observation) -> Observation:
        try:
            uri = promote(self.store, self.paths, self.job.spec, datetime.now(UTC))
        except ChampionChanged as lost:
            return replace(observation, promotion_rejected=lost.verdict)
        except PromotionError as error:
            return replace(observation, promotion_error=str(error))
        return replace(observation, promoted_uri=uri)

    def record(self, decision: Decision) -> None:
        """Merge the status patch into status.json, and say what happened."""
        if decision.status:
            self.raw_status = merge_patch(self.raw_status, decision.status)
            save_status(self.store, self.paths, parse_status(self.raw_status))
        for event in decision.events:
            self.say(event)

    def say(self, event: Event) -> None:
        style = "yellow" if event.type == "Warning" else "cyan"
        self.console.print(f"[{style}]{event.reason}[/]: {event.message}", highlight=False)

    def summary(self) -> int:
        self.console.print()
        config = RunConfig.model_validate(self.store.get_json(self.paths.config))
        snapshot = RunSnapshot(self.paths, config, parse_status(self.raw_status))
        self.console.print(run_details(self.store, snapshot))
        if snapshot.status.phase == "AwaitingApproval":
            approve = approve_command(self.paths, self.store, self.endpoint)
            self.console.print(f"approve with: {approve}", highlight=False)
        return PHASE_EXIT[snapshot.status.phase or "Failed"]


# ------------------------------------------------------------------ entry points


def run_manifest(
    path: Path, store: str | None, endpoint: str | None, command: StageCommand = finetune_command
) -> int:
    """`finetune run`: exit 0 promoted or awaiting approval, 2 rejected, 1 failed,
    130 interrupted (resume by running it again). `command` builds a stage's command line."""
    console = Console()

    def run(job: LocalJob, settings: LocalSettings, artifacts: ArtifactStore) -> int:
        return _run(console, job, artifacts, endpoint, command, settings)

    return _with_job(console, path, store, endpoint, run, create_bucket=True)


def _with_job(
    console: Console,
    path: Path,
    store: str | None,
    endpoint: str | None,
    body: Callable[[LocalJob, LocalSettings, ArtifactStore], int],
    create_bucket: bool = False,
) -> int:
    """Load the manifest and the local settings, open the store and hold the job's run lock
    around `body`; every failure on the way is a message and exit 1."""
    try:
        job = load_job(path)
        settings = LocalSettings.from_env()
    except InvalidManifest as invalid:
        print_problems(console, path, invalid.problems)
        return EXIT_FAILED
    except InvalidSetting as invalid:
        console.print(f"[red]{invalid}[/]", highlight=False)
        return EXIT_FAILED
    try:
        artifacts = open_store(store, endpoint)
        if create_bucket and isinstance(artifacts, S3Store):
            artifacts.ensure_bucket()
        with run_lock(artifacts, job.namespace, job.name):
            return body(job, settings, artifacts)
    except StoreUnavailable as error:
        console.print(f"[red]The artifact store is unreachable:[/] {error}")
        return EXIT_FAILED
    except RunLocked as locked:
        console.print(f"[red]{locked}[/]", highlight=False)
        return EXIT_FAILED


def _run(
    console: Console,
    job: LocalJob,
    store: ArtifactStore,
    endpoint: str | None,
    command: StageCommand,
    settings: LocalSettings,
) -> int:
    latest = latest_run(store, job.namespace, job.name)
    # A local job has no API server to give it a UID: it gets one at its first run, and
    # every later generation keeps it.
    known = latest.config.uid if latest is not None else None
    job = replace(job, uid=known or str(uuid.uuid4()))
    choice = choose_generation(job.spec, latest, job.dataset_sha256)
    run = RunPaths(job.namespace, job.name, choice.generation)
    console.print(
        f"[bold]{job.namespace}/{job.name}[/] generation {choice.generation}: {choice.why}"
    )
    console.print(f"store: {store.uri()}")
    if choice.action == "report":
        assert latest is not None
        console.print(run_details(store, latest))
        return PHASE_EXIT[latest.status.phase or "Failed"]
    # A new generation starts from the previous one's status, as a FineTuneJob's does, so
    # that status.runs keeps the history.
    raw_status = latest.status.to_wire() if latest is not None else {}
    if choice.action == "start":
        config = new_run_config(run, job.uid, job.spec)
        store.put_json(run.config, config.to_wire())
    with _executor(
        console, store, job, choice.generation, raw_status, endpoint, command, settings=settings
    ) as executor:
        first = None
        if choice.action == "resume":
            first = resume(executor.state(), datetime.now(UTC), choice.why)
        return executor.execute(first)


@contextmanager
def _executor(
    console: Console,
    store: ArtifactStore,
    job: LocalJob,
    generation: int,
    raw_status: dict[str, Any],
    endpoint: str | None,
    command: StageCommand,
    approved: bool = False,
    rebenchmark: str | None = None,
    settings: LocalSettings | None = None,
) -> Iterator[LocalExecutor]:
    with (
        tempfile.TemporaryDirectory(prefix="finetune-logs-") as logs,
        Interruption().installed() as interruption,
    ):
        yield LocalExecutor(
            console,
            store,
            job,
            generation,
            raw_status,
            stage_env(store, endpoint),
            Path(logs),
            interruption,
            endpoint=endpoint,
            approved=approved,
            rebenchmark=rebenchmark,
            command=command,
            settings=settings or LocalSettings.from_env(),
        )


def approve_run(
    name: str, store: str | None, endpoint: str | None, command: StageCommand = finetune_command
) -> int:
    """`finetune approve [NAMESPACE/]NAME`: promote a run that passed the gate and waits for
    approval (promotion.policy: manual), as the approve annotation does in a cluster."""
    console = Console()
    try:
        settings = LocalSettings.from_env()
    except InvalidSetting as invalid:
        console.print(f"[red]{invalid}[/]", highlight=False)
        return EXIT_FAILED
    found = named_run(console, name, store, endpoint)
    if found is None:
        return EXIT_FAILED
    artifacts, snapshot = found
    run, status = snapshot.paths, snapshot.status
    if status.phase != "AwaitingApproval":
        console.print(
            f"[red]{run.namespace}/{run.name} generation {run.generation} is {status.phase}; "
            "only a run in AwaitingApproval can be approved[/]"
        )
        return EXIT_FAILED
    try:
        with run_lock(artifacts, run.namespace, run.name):
            return _execute_recorded(
                console, artifacts, snapshot, 0, endpoint, command, settings, approved=True
            )
    except RunLocked as locked:
        console.print(f"[red]{locked}[/]", highlight=False)
        return EXIT_FAILED


def rebenchmark_run(
    path: Path, store: str | None, endpoint: str | None, command: StageCommand = finetune_command
) -> int:
    """`finetune run --rebenchmark FILE.yaml`: measure the manifest's latest generation once
    more (one more benchmark stage, round 2, 3, ...) and gate it again, without retraining,
    as the annotation finetune.dev/rebenchmark does in a cluster. Only a Rejected or
    AwaitingApproval run: a promoted one is not re-gated."""
    console = Console()

    def rebenchmark(manifest: LocalJob, settings: LocalSettings, artifacts: ArtifactStore) -> int:
        latest = latest_run(artifacts, manifest.namespace, manifest.name)
        if latest is None:
            console.print(
                f"[red]{manifest.namespace}/{manifest.name} has no run in "
                f"{artifacts.uri()}: run it first (finetune run {path})[/]",
                highlight=False,
            )
            return EXIT_FAILED
        run, status = latest.paths, latest.status
        if status.phase not in REBENCHMARKABLE:
            why = (
                "a promoted run is not re-gated: retrain it (change the manifest) or roll "
                "back (finetune rollback)"
                if status.phase == "Promoted"
                else "only a Rejected or AwaitingApproval run is re-benchmarked"
            )
            console.print(
                f"[red]{run.namespace}/{run.name} generation {run.generation} is "
                f"{status.phase}; {why}[/]",
                highlight=False,
            )
            return EXIT_FAILED
        # The value a person would annotate: the generation, the first time; then one of
        # its own for each further round.
        request = str(run.generation)
        if status.rebenchmark_request == request:
            request = f"{run.generation}/r{(status.benchmark_round or 1) + 1}"
        return _execute_recorded(
            console,
            artifacts,
            latest,
            manifest.gpus,
            endpoint,
            command,
            settings,
            rebenchmark=request,
        )

    return _with_job(console, path, store, endpoint, rebenchmark)


def _execute_recorded(
    console: Console,
    artifacts: ArtifactStore,
    snapshot: RunSnapshot,
    gpus: int,
    endpoint: str | None,
    command: StageCommand,
    settings: LocalSettings | None,
    approved: bool = False,
    rebenchmark: str | None = None,
) -> int:
    """Carry a recorded run on from its status (an approval, a re-benchmark), with the
    spec and owner its config.json recorded."""
    run, config = snapshot.paths, snapshot.config
    job = LocalJob(run.namespace, run.name, config.spec, gpus, None, config.uid)
    with _executor(
        console,
        artifacts,
        job,
        run.generation,
        snapshot.status.to_wire(),
        endpoint,
        command,
        approved=approved,
        rebenchmark=rebenchmark,
        settings=settings,
    ) as executor:
        return executor.execute()


def approve_command(run: RunPaths, store: ArtifactStore, endpoint: str | None) -> str:
    """The command line that approves a run (printed for the user, never executed)."""
    words = ["finetune", "approve", f"{run.namespace}/{run.name}", "--store", store.uri()]
    if endpoint:
        words += ["--s3-endpoint", endpoint]
    return shlex.join(words)
