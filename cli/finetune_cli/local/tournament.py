"""`finetune run tournament.yaml`: a FineTuneTournament's lifecycle
(finetune_core.tournament_lifecycle) carried out here.

The same decisions the operator carries out in a cluster, with local means: a candidate is a
child `finetune run` of its own FineTuneJob manifest (one after another; `--parallel N`
overlaps N), the tournament's status and which run each candidate's child is are kept in
`tournaments/<namespace>/<name>/local.json`, an Event is a console line. Candidates that
already ran their spec (an earlier, interrupted tournament) are reported, not repeated.

Exit codes: 0 a winner was promoted (or awaits approval), 2 no candidate met the SLA,
1 failed; 130 interrupted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field
from rich.console import Console
from rich.live import Live
from rich.table import Table

from finetune_cli.local.generations import choose_generation
from finetune_cli.local.manifest import LOCAL_NAMESPACE, load_job, print_problems
from finetune_cli.local.processes import POLL_SECONDS, Interruption, die_with_parent
from finetune_core.api import API_VERSION, KIND, EvaluationReport, StatusModel
from finetune_core.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_REJECTED
from finetune_core.layout import RunPaths
from finetune_core.lifecycle import APPROVE_ANNOTATION, Event, merge_patch
from finetune_core.manifest import InvalidManifest, Problem, load_documents
from finetune_core.runs import latest_run, load_run
from finetune_core.store import (
    ArtifactStore,
    S3Store,
    StoreUnavailable,
    local_file_uri,
    open_store,
    read_model_if_valid,
)
from finetune_core.tournament import (
    TOURNAMENT_KIND,
    FineTuneTournamentStatus,
    parse_tournament,
)
from finetune_core.tournament_lifecycle import (
    LABEL_CANDIDATE,
    LABEL_ROUND,
    LABEL_TOURNAMENT,
    ChildPlan,
    TournamentDecision,
    TournamentObservation,
    decide,
    evaluations_to_read,
    tournament_state,
)
from finetune_core.tournament_promotion import promote_winner

TOURNAMENT_EXIT = {
    "Promoted": EXIT_OK,
    "AwaitingApproval": EXIT_OK,
    "NoWinner": EXIT_REJECTED,
    "Failed": EXIT_FAILED,
}
"""`finetune run`'s exit code for the phase a tournament settled in."""

ChildCommand = Callable[[Path, str, str | None], list[str]]


def finetune_run_command(manifest: Path, store: str, endpoint: str | None) -> list[str]:
    """A candidate's child: `finetune run` of its FineTuneJob, with this interpreter."""
    command = [sys.executable, "-m", "finetune_cli", "run", str(manifest), "--store", store]
    return command + (["--s3-endpoint", endpoint] if endpoint else [])


class LocalTournament(StatusModel):
    """tournaments/<namespace>/<name>/local.json: what a cluster keeps in the object."""

    generation: int = 1
    spec: dict[str, Any] = Field(default_factory=dict)
    status: dict[str, Any] = Field(default_factory=dict)
    children: dict[str, int] = Field(
        default_factory=dict, description="candidate -> the generation of its run this round"
    )


def is_tournament(path: Path) -> bool:
    """Whether a manifest holds a FineTuneTournament (else it is run as a FineTuneJob)."""
    try:
        documents = load_documents(path)
    except (OSError, yaml.YAMLError):
        return False
    first = documents[0] if len(documents) == 1 else None
    return isinstance(first, dict) and first.get("kind") == TOURNAMENT_KIND


def localized(doc: dict[str, Any], base: Path) -> dict[str, Any]:
    """The tournament with every local file an absolute file:// URI (relative paths are
    relative to the manifest's folder), so that each child manifest stands anywhere."""

    def fix(spec: Any) -> None:
        if not isinstance(spec, dict):
            return
        dataset = spec.get("dataset")
        if isinstance(dataset, dict) and isinstance(dataset.get("uri"), str):
            dataset["uri"] = local_file_uri(dataset["uri"], base)
        benchmark = spec.get("benchmark")
        for profile in (benchmark or {}).get("sla") or [] if isinstance(benchmark, dict) else []:
            if isinstance(profile, dict) and isinstance(profile.get("prompts"), str):
                profile["prompts"] = local_file_uri(profile["prompts"], base)

    spec = doc.get("spec")
    if isinstance(spec, dict):
        fix(spec.get("template"))
        for candidate in spec.get("candidates") or []:
            fix(candidate)
        fix(spec.get("selection"))
    return doc


@dataclass
class Child:
    """A candidate's child `finetune run` of this invocation."""

    process: subprocess.Popen[bytes]
    log: Path


@dataclass
class TournamentRunner:
    console: Console
    store: ArtifactStore
    store_uri: str
    endpoint: str | None
    doc: dict[str, Any]
    local: LocalTournament
    workdir: Path
    interruption: Interruption
    command: ChildCommand = finetune_run_command
    approved: bool = False  # `finetune approve`: this generation is approved
    children: dict[str, Child] = field(default_factory=dict)
    exits: dict[str, int] = field(default_factory=dict)

    @property
    def namespace(self) -> str:
        return str(self.doc["metadata"].get("namespace") or LOCAL_NAMESPACE)

    @property
    def name(self) -> str:
        return str(self.doc["metadata"]["name"])

    @property
    def state_key(self) -> str:
        return f"tournaments/{self.namespace}/{self.name}/local.json"

    def save(self) -> None:
        self.store.put_json(self.state_key, self.local.to_wire())

    # ---------------------------------------------------------------- observe

    def obj(self) -> dict[str, Any]:
        return {
            **self.doc,
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "generation": self.local.generation,
                "annotations": (
                    {APPROVE_ANNOTATION: str(self.local.generation)} if self.approved else {}
                ),
            },
            "status": self.local.status,
        }

    def child_objects(self) -> list[dict[str, Any]]:
        """Each candidate's run of this round as a FineTuneJob would look in a cluster."""
        objects = []
        for candidate, generation in self.local.children.items():
            job = f"{self.name}-{candidate}"
            snapshot = load_run(self.store, RunPaths(self.namespace, job, generation))
            status = snapshot.status.to_wire() if snapshot is not None else {}
            running = candidate in self.children and self.children[candidate].process.poll() is None
            settled = status.get("phase") in ("Passed", "Rejected", "Failed", "Promoted")
            if candidate not in self.children and not settled:
                # Left unfinished by an earlier invocation (interrupted): as if never
                # started, so that it is started again and its `finetune run` resumes it.
                continue
            if candidate in self.exits and not running and not settled:
                # The child exited without settling its run (an invalid manifest, a crash).
                status = {
                    "phase": "Failed",
                    "observedGeneration": generation,
                    "message": f"`finetune run` of {job} exited with code "
                    f"{self.exits[candidate]} (see {self.log_path(candidate)})",
                }
            objects.append(
                {
                    "metadata": {
                        "name": job,
                        "generation": generation,
                        "labels": {
                            LABEL_TOURNAMENT: self.name,
                            LABEL_CANDIDATE: candidate,
                            LABEL_ROUND: str(self.local.generation),
                        },
                    },
                    "status": status,
                }
            )
        return objects

    def observe(self) -> TournamentObservation:
        state = tournament_state(self.obj(), self.child_objects())
        evaluations = {
            candidate: read_model_if_valid(self.store, run.evaluation, EvaluationReport)
            for candidate, run in evaluations_to_read(state).items()
        }
        return TournamentObservation(
            state=state,
            evaluations=evaluations,
            report_uri=self.store.uri(state.paths.report_html),
        )

    # ---------------------------------------------------------------- act and record

    def execute(self) -> int:
        idle = 0  # passes in a row in which nothing ran and nothing changed
        with Live(self.table(), console=self.console, auto_refresh=False) as live:
            while True:
                observation = self.observe()
                decision = decide(observation, datetime.now(UTC))
                if decision.promote is not None:
                    self.write_report(decision)
                    observation = self.promote(observation, decision)
                    decision = decide(observation, datetime.now(UTC))
                for plan in decision.children:
                    self.start(plan)
                self.write_report(decision)
                self.record(decision, live)
                live.update(self.table(), refresh=True)
                if decision.requeue or decision.children:
                    idle = 0
                    continue
                self.reap()
                if any(c.process.poll() is None for c in self.children.values()):
                    if self.interruption.count:
                        return self.stop()
                    time.sleep(POLL_SECONDS)
                    continue
                state = tournament_state(self.obj(), self.child_objects())
                if state.settled:
                    break
                idle = 0 if decision.status else idle + 1
                if idle > 2:
                    raise AssertionError(f"the tournament made no progress at {state.phase}")
        return self.summary()

    def reap(self) -> None:
        for candidate, child in self.children.items():
            code = child.process.poll()
            if code is not None and candidate not in self.exits:
                self.exits[candidate] = code
                self.store.put_file(
                    f"tournaments/{self.namespace}/{self.name}/g{self.local.generation}/logs/"
                    f"{candidate}.log",
                    child.log,
                )

    def log_path(self, candidate: str) -> Path:
        return self.workdir / f"{candidate}.log"

    def start(self, plan: ChildPlan) -> None:
        """Write the candidate's FineTuneJob manifest and start its `finetune run`; the
        generation its run will have is recorded first (the child chooses it the same way)."""
        manifest = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": plan.job, "namespace": self.namespace},
            "spec": plan.spec,
        }
        path = self.workdir / f"{plan.job}.yaml"
        path.write_text(yaml.safe_dump(manifest, sort_keys=False))
        job = load_job(path)
        latest = latest_run(self.store, job.namespace, job.name)
        choice = choose_generation(job.spec, latest, job.dataset_sha256)
        self.local.children[plan.candidate] = choice.generation
        self.save()
        log = self.log_path(plan.candidate)
        with log.open("wb") as output:
            process = subprocess.Popen(
                self.command(path, self.store_uri, self.endpoint),
                preexec_fn=die_with_parent,  # a candidate never outlives its tournament
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "COLUMNS": "120"},
            )
        self.children[plan.candidate] = Child(process, log)
        self.exits.pop(plan.candidate, None)

    def stop(self) -> int:
        """Ctrl-C: the children got it too (same terminal); SIGTERM reaches them otherwise."""
        for child in self.children.values():
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        for child in self.children.values():
            child.process.wait()
        self.console.print(
            "interrupted; run `finetune run` with the same manifest again to resume",
            style="yellow",
        )
        return self.interruption.exit_code

    def promote(
        self, observation: TournamentObservation, decision: TournamentDecision
    ) -> TournamentObservation:
        plan = decision.promote
        assert plan is not None
        return promote_winner(self.store, observation, plan, datetime.now(UTC))

    def write_report(self, decision: TournamentDecision) -> None:
        if decision.report is not None:
            for key, (body, content_type) in decision.report.files.items():
                self.store.put_bytes(key, body, content_type)

    def record(self, decision: TournamentDecision, live: Live) -> None:
        if decision.status:
            self.local.status = merge_patch(self.local.status, decision.status)
            self.save()
        for event in decision.events:
            self.say(event, live)

    def say(self, event: Event, live: Live) -> None:
        style = "yellow" if event.type == "Warning" else "cyan"
        live.console.print(f"[{style}]{event.reason}[/]: {event.message}", highlight=False)

    def table(self) -> Table:
        status = _status(self.local.status)
        table = Table(
            title=f"{self.namespace}/{self.name} generation {self.local.generation}: "
            f"{status.phase or 'starting'} ({status.done or '-'} done)"
        )
        for column in ("Rank", "Candidate", "Phase", "Eval loss", "Bits/byte", "Gated latency"):
            table.add_column(column)
        for entry in status.leaderboard:
            latency = ", ".join(
                f"{p.name} {p.seconds:.2f} s" for p in entry.latency if p.seconds is not None
            )
            table.add_row(
                str(entry.rank or "-"),
                entry.name,
                entry.phase or "-",
                "-" if entry.eval_loss is None else f"{entry.eval_loss:.4f}",
                "-" if entry.bits_per_byte is None else f"{entry.bits_per_byte:.4f}",
                latency or "-",
            )
        return table

    def summary(self) -> int:
        status = _status(self.local.status)
        self.console.print(
            f"[bold]{status.phase}[/]: {status.message}", highlight=False, soft_wrap=True
        )
        if status.report:
            self.console.print(f"report: {status.report}", highlight=False)
        return TOURNAMENT_EXIT.get(status.phase or "Failed", EXIT_FAILED)


def _status(raw: dict[str, Any]) -> FineTuneTournamentStatus:
    try:
        return FineTuneTournamentStatus.model_validate(raw)
    except ValueError:
        return FineTuneTournamentStatus()


def _comparable(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec as far as a new generation goes: maxParallel is how, not what, to run."""
    return {key: value for key, value in spec.items() if key != "maxParallel"}


def next_local(previous: LocalTournament | None, spec: dict[str, Any]) -> LocalTournament:
    """The tournament's local record for this invocation: the same generation while the
    spec is unchanged (resumed, or reported), else the next one."""
    if previous is None:
        return LocalTournament(generation=1, spec=spec)
    if _comparable(previous.spec) == _comparable(spec):
        return previous.model_copy(update={"spec": spec})
    return LocalTournament(
        generation=previous.generation + 1,
        spec=spec,
        status=previous.status,
    )


def run_tournament(
    path: Path,
    store: str | None,
    endpoint: str | None,
    parallel: int = 1,
    command: ChildCommand = finetune_run_command,
) -> int:
    """`finetune run tournament.yaml`: the candidates `parallel` at a time, then the winner."""
    console = Console()
    try:
        documents = load_documents(path)
        doc = localized(documents[0], path.resolve().parent)
        doc.setdefault("spec", {})
        if isinstance(doc["spec"], dict):
            doc["spec"]["maxParallel"] = parallel
        tournament = parse_tournament(doc)
    except InvalidManifest as invalid:
        print_problems(console, path, invalid.problems)
        return EXIT_FAILED
    except (OSError, yaml.YAMLError) as error:
        print_problems(console, path, [Problem("(file)", " ".join(str(error).split()))])
        return EXIT_FAILED
    try:
        artifacts = open_store(store, endpoint)
        if isinstance(artifacts, S3Store):
            artifacts.ensure_bucket()
        namespace = tournament.namespace or LOCAL_NAMESPACE
        key = f"tournaments/{namespace}/{tournament.name}/local.json"
        previous = read_model_if_valid(artifacts, key, LocalTournament)
        local = next_local(previous, doc["spec"])
        console.print(
            f"[bold]{namespace}/{tournament.name}[/] generation {local.generation}: "
            f"{len(tournament.spec.candidates)} candidates, {parallel} at a time"
        )
        console.print(f"store: {artifacts.uri()}")
        store_uri = artifacts.uri()
        with (
            tempfile.TemporaryDirectory(prefix="finetune-tournament-") as workdir,
            Interruption().installed() as interruption,
        ):
            runner = TournamentRunner(
                console,
                artifacts,
                store_uri,
                endpoint,
                doc,
                local,
                Path(workdir),
                interruption,
                command,
            )
            runner.save()
            return runner.execute()
    except StoreUnavailable as error:
        console.print(f"[red]The artifact store is unreachable:[/] {error}")
        return EXIT_FAILED


def find_tournament(store: ArtifactStore, name: str) -> tuple[str, str, LocalTournament] | None:
    """(namespace, name, record) of the local tournament `[namespace/]name`, if there is one."""
    namespace, _, tournament = name.rpartition("/")
    keys = [
        key
        for key in store.list(f"tournaments/{namespace}/" if namespace else "tournaments/")
        if key.endswith(f"/{tournament}/local.json") and key.count("/") == 3
    ]
    if len(keys) != 1:
        return None
    record = read_model_if_valid(store, keys[0], LocalTournament)
    if record is None:
        return None
    return keys[0].split("/")[1], tournament, record


def approve_tournament(
    name: str,
    store: str | None,
    endpoint: str | None,
    command: ChildCommand = finetune_run_command,
) -> int | None:
    """`finetune approve [NAMESPACE/]NAME` of a local tournament that waits for approval:
    promotes its winner, as the approve annotation does in a cluster. None when there is no
    tournament of that name (the name is then a FineTuneJob's)."""
    artifacts = open_store(store, endpoint)
    found = find_tournament(artifacts, name)
    if found is None:
        return None
    namespace, tournament, local = found
    console = Console()
    phase = _status(local.status).phase
    if phase != "AwaitingApproval":
        console.print(
            f"[red]{namespace}/{tournament} generation {local.generation} is {phase}; only a "
            "tournament in AwaitingApproval can be approved[/]"
        )
        return EXIT_FAILED
    doc = {
        "apiVersion": API_VERSION,
        "kind": TOURNAMENT_KIND,
        "metadata": {"name": tournament, "namespace": namespace},
        "spec": local.spec,
    }
    with (
        tempfile.TemporaryDirectory(prefix="finetune-tournament-") as workdir,
        Interruption().installed() as interruption,
    ):
        runner = TournamentRunner(
            console,
            artifacts,
            artifacts.uri(),
            endpoint,
            doc,
            local,
            Path(workdir),
            interruption,
            command,
            approved=True,
        )
        return runner.execute()
