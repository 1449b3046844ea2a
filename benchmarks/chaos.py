"""Prove that the operator converges: many FineTuneJob lifecycles at once, the operator process
SIGKILLed at random moments, optionally the API answering a share of its requests with
errors or stalls.

The operator runs as a real process (`python -m finetune_cli operator`, KUBECONFIG pointing
at the Kubernetes API emulator the operator's tests use); a supervisor restarts it after
every kill, as the kubelet would, with the same identity (a pod's name), so it takes its
Lease back at once. The script plays the Job controller and the pods: each Job it finds runs
for a random while, writes the files its stage leaves (tests/support/stage_files.py) and
ends as its scenario says. The scenarios mix runs that pass the gate, miss the SLA, and fail
in training or in the benchmark. The store is moto's S3 server.

Checked at the end: every FineTuneJob reaches the terminal phase of its scenario; exactly one
Job was ever created per stage and generation (counted from the emulator's own record of
creations, so a Job deleted and made again counts twice); every promoted alias
(models/**/current.json) and every promoted run point at a copy that holds its adapter.

    python benchmarks/chaos.py [--lifecycles 20] [--kills 200] [--seed N] [--faults 0.1]

Exit 0 when everything converged, 1 when not. Everything is seeded (the seed is printed);
the moments of the kills are seeded too, but what the operator was doing at that moment
depends on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import signal
import socket
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: the tests' emulator is imported from REPO
    sys.path.insert(0, str(REPO))

import kmock  # noqa: E402
import yaml  # noqa: E402

from finetune_core.api import TERMINAL_PHASES  # noqa: E402
from finetune_core.layout import RunPaths  # noqa: E402
from finetune_core.store import ArtifactStore, S3Store  # noqa: E402
from finetune_operator.builders import LABEL_JOB, LABEL_STAGE  # noqa: E402
from tests.integration.operator.emulator import ApiServer, Faults  # noqa: E402
from tests.integration.operator.harness import (  # noqa: E402
    JOBS,
    NAMESPACE,
    Cluster,
    declare_resources,
    kubeconfig,
)
from tests.support import stage_files  # noqa: E402
from tests.support.manifests import small_job  # noqa: E402

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "chaos-access-key", "AWS_SECRET_ACCESS_KEY": "chaos-secret"}
IDENTITY = "finetune-operator-0"  # the "pod": kept across restarts, as a pod's name is

# scenario -> (terminal phase, the stages it creates Jobs for)
SCENARIOS: dict[str, tuple[str, tuple[str, ...]]] = {
    "promoted": ("Promoted", ("train", "benchmark")),
    "sla-missed": ("Rejected", ("train", "benchmark")),
    "train-failed": ("Failed", ("train",)),
    "bench-failed": ("Failed", ("train", "benchmark")),
}


@dataclass
class ChaosConfig:
    lifecycles: int = 20
    kills: int = 200
    seed: int = 0
    fault_rate: float = 0.0
    # How long a stage's pod runs (s): drawn per Job; by default long enough that the
    # lifecycles stay in flight while the kills happen.
    stage_seconds: tuple[float, float] | None = None
    # A kill comes this long (s, drawn) after the operator starts leading; one in four
    # comes at a random moment from the process's start instead, often before it leads.
    kill_after_leading: tuple[float, float] = (0.0, 2.0)
    kill_after_start: tuple[float, float] = (0.0, 3.0)
    settle_timeout: float = 300.0
    # As in a cluster, not as in a one-object test: 20 objects polled every 0.3 s keep two
    # busy cores saturated.
    progress_interval: float = 1.0
    api_timeout: float = 5.0
    stall_seconds: float = 6.0  # longer than the operator's request timeout
    verbose: bool = False  # a progress line every 25 kills

    def stage_range(self) -> tuple[float, float]:
        if self.stage_seconds is not None:
            return self.stage_seconds
        # About 3.5 s per kill (a restart, some work): spread two stages over that window.
        window = max(10.0, self.kills * 3.5)
        return (0.5, window / 2)


@dataclass
class ChaosResult:
    config: ChaosConfig
    wall_seconds: float = 0.0
    kill_seconds: float = 0.0  # until the last kill
    settle_seconds: float = 0.0  # until every lifecycle was terminal
    kills: int = 0
    starts: int = 0
    exits: list[int] = field(default_factory=list)  # exit codes of runs that ended by themselves
    faults: Counter[str] = field(default_factory=Counter)
    jobs_created: int = 0
    job_create_requests: int = 0
    duplicates: list[str] = field(default_factory=list)
    missing_jobs: list[str] = field(default_factory=list)
    wrong_phases: list[str] = field(default_factory=list)
    bad_aliases: list[str] = field(default_factory=list)
    aliases: int = 0
    phases: Counter[str] = field(default_factory=Counter)

    @property
    def converged(self) -> bool:
        return not (self.duplicates or self.missing_jobs or self.wrong_phases or self.bad_aliases)

    def lines(self) -> Iterator[str]:
        c = self.config
        yield f"seed {c.seed}"
        yield (
            f"lifecycles {c.lifecycles} ({', '.join(f'{k} {v}' for k, v in self.phases.items())})"
        )
        yield (
            f"operator SIGKILLs {self.kills}, starts {self.starts}, "
            f"exits by itself {len(self.exits)}"
        )
        faults = ", ".join(f"{kind} {n}" for kind, n in sorted(self.faults.items())) or "none"
        yield f"API faults injected {sum(self.faults.values())} ({faults}; rate {c.fault_rate})"
        yield (
            f"Jobs created {self.jobs_created} (create requests {self.job_create_requests}), "
            f"duplicates {len(self.duplicates)}, missing {len(self.missing_jobs)}"
        )
        yield f"promoted aliases {self.aliases}, inconsistent {len(self.bad_aliases)}"
        yield f"wrong terminal phases {len(self.wrong_phases)}"
        for problem in self.duplicates + self.missing_jobs + self.wrong_phases + self.bad_aliases:
            yield f"  {problem}"
        yield (
            f"wall time {self.wall_seconds:.1f} s (the last kill at {self.kill_seconds:.1f} s, "
            f"all settled at {self.settle_seconds:.1f} s)"
        )
        yield "CONVERGED" if self.converged else "NOT CONVERGED"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Operator:
    """The operator process and its supervisor's view of it."""

    def __init__(self, workdir: Path, env: dict[str, str]):
        self.env = env
        self.log = workdir / "operator.log"
        self.health = f"http://127.0.0.1:{env['FINETUNE_HEALTH_PORT']}/healthz"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "finetune_cli",
                "operator",
                env=self.env,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )

    def leading(self) -> bool:
        try:
            with urllib.request.urlopen(self.health, timeout=1) as response:
                return b'"leader": true' in response.read()
        except OSError:
            return False

    async def wait_leading(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.alive:
            if await asyncio.to_thread(self.leading):
                return True
            await asyncio.sleep(0.05)
        return False

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def stop(self) -> int | None:
        if not self.alive:
            return None
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.process.wait(), 30)
        except TimeoutError:
            await self.kill()
            return None


class JobController:
    """Plays the Job controller and the pods: runs every Job for a drawn while, writes the
    stage's files, and ends it as the owner's scenario says."""

    def __init__(
        self, cluster: Cluster, scenarios: dict[str, str], rng: random.Random, config: ChaosConfig
    ):
        self.cluster = cluster
        self.scenarios = scenarios
        self.rng = rng
        self.low, self.high = config.stage_range()
        self.plans: dict[str, tuple[float, float]] = {}  # Job -> (running at, done at)
        self.done: set[str] = set()
        self.running: set[str] = set()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.step()
            await asyncio.sleep(0.05)

    async def step(self) -> None:
        now = time.monotonic()
        jobs = [
            obj.raw
            for (resource, _, _), obj in list(self.cluster.api.objects.items())
            if resource == JOBS and not obj.deleted
        ]
        for raw in jobs:
            name = raw["metadata"]["name"]
            if name in self.done:
                continue
            if name not in self.plans:
                start = now + self.rng.uniform(0.05, 0.5)
                self.plans[name] = (start, start + self.rng.uniform(self.low, self.high))
            running_at, done_at = self.plans[name]
            labels = raw["metadata"].get("labels") or {}
            owner, stage = labels[LABEL_JOB], labels[LABEL_STAGE]
            run = RunPaths(NAMESPACE, owner, int(name.rsplit("-g", 1)[1].split("-")[0]))
            if now >= running_at and name not in self.running:
                self.running.add(name)
                if stage == "train":
                    await asyncio.to_thread(stage_files.progress, self.cluster.store, run, 1, 4)
                await self.cluster.job_running(name)
            if now >= done_at:
                self.done.add(name)
                await self.finish(name, owner, stage, run)

    async def finish(self, job: str, owner: str, stage: str, run: RunPaths) -> None:
        scenario, store = self.scenarios[owner], self.cluster.store
        if (scenario, stage) in (("train-failed", "train"), ("bench-failed", "benchmark")):
            reason = "TrainingFailed" if stage == "train" else "BenchmarkFailed"
            await asyncio.to_thread(
                stage_files.failed, store, run, stage, reason, f"{stage} failed (chaos)"
            )
            await self.cluster.job_failed(job, "BackoffLimitExceeded", "Job has reached the limit")
            return
        if stage == "train":
            await asyncio.to_thread(stage_files.trained, store, run)
        else:
            p95 = 9.0 if scenario == "sla-missed" else 2.5
            await asyncio.to_thread(stage_files.benchmarked, store, run, p95)
        await self.cluster.job_succeeded(job)


async def supervise(
    operator: Operator,
    config: ChaosConfig,
    rng: random.Random,
    result: ChaosResult,
    settled: asyncio.Event,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Keep the operator running, as the kubelet would; SIGKILL it `kills` times at drawn
    moments; then leave it alone until the lifecycles settle."""
    while not settled.is_set():
        if not operator.alive:
            await operator.start()
            result.starts += 1
        if result.kills >= config.kills:
            await asyncio.sleep(0.1)
            if operator.process is not None and operator.process.returncode is not None:
                result.exits.append(operator.process.returncode)
            continue
        if rng.random() < 0.25:
            delay = rng.uniform(*config.kill_after_start)
        else:
            await operator.wait_leading(30)
            delay = rng.uniform(*config.kill_after_leading)
        deadline = time.monotonic() + delay
        while operator.alive and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if operator.alive:
            await operator.kill()
            result.kills += 1
            if progress is not None and result.kills % 25 == 0:
                progress(result.kills)
        elif operator.process is not None and operator.process.returncode is not None:
            result.exits.append(operator.process.returncode)


def check(cluster: Cluster, scenarios: dict[str, str], result: ChaosResult) -> None:
    api, store = cluster.api, cluster.store
    created = Counter(job["metadata"]["name"] for job in api.created(JOBS))
    result.jobs_created = sum(created.values())
    result.job_create_requests = sum(
        1 for request in api.served() if request.method == "POST" and request.resource == JOBS
    )
    expected: set[str] = set()
    for name, scenario in scenarios.items():
        phase, stages = SCENARIOS[scenario]
        status = cluster.status(name)
        result.phases[status.get("phase") or "none"] += 1
        if status.get("phase") != phase or status.get("observedGeneration") != 1:
            result.wrong_phases.append(
                f"{name} ({scenario}): {status.get('phase')} (expected {phase}), "
                f"{status.get('reason') or ''} {status.get('message') or ''}".rstrip()
            )
        for stage in stages:
            expected.add(f"{name}-g1-{'train' if stage == 'train' else 'bench'}")
        promoted = status.get("promotedModel")
        if phase == "Promoted" and promoted and not has_adapter(store, promoted):
            result.bad_aliases.append(f"{name}: promotedModel {promoted} has no adapter")
    for job, count in created.items():
        if job not in expected:
            result.duplicates.append(f"unexpected Job {job}")
        elif count > 1:
            result.duplicates.append(f"Job {job} created {count} times")
    result.missing_jobs += [f"Job {job} never created" for job in sorted(expected - set(created))]
    for key in store.list("models/"):
        if not key.endswith("/current.json"):
            continue
        result.aliases += 1
        alias = store.get_json(key)
        if not has_adapter(store, alias.get("uri", "")):
            result.bad_aliases.append(f"{key} points at {alias.get('uri')}, which has no adapter")


def has_adapter(store: ArtifactStore, uri: str) -> bool:
    """Whether a promoted copy (its URI in this store) holds the adapter the pods wrote."""
    root = store.uri("").rstrip("/") + "/"
    if not uri.startswith(root):
        return False
    prefix = uri.removeprefix(root).strip("/")
    return all(
        store.exists(f"{prefix}/adapter/{file}")
        for file in ("adapter_config.json", "adapter_model.safetensors")
    )


async def run_chaos(config: ChaosConfig, workdir: Path, s3_endpoint: str) -> ChaosResult:
    """One chaos run against a fresh emulator and bucket; returns the figures."""
    rng = random.Random(config.seed)
    result = ChaosResult(config)
    bucket = f"chaos-{config.seed}-{rng.randrange(16**8):08x}"
    store = S3Store(
        bucket,
        endpoint=s3_endpoint,
        access_key=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        secret_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )
    store.ensure_bucket()
    store.put_bytes("datasets/chat.jsonl", b'{"messages": [{"role": "user", "content": "hi"}]}\n')
    faults = (
        Faults(config.fault_rate, config.seed, config.stall_seconds) if config.fault_rate else None
    )
    started = time.monotonic()
    async with ApiServer(faults=faults) as api, kmock.Server(api):
        declare_resources(api)
        kubeconfig_path = workdir / "kubeconfig"
        kubeconfig_path.write_text(yaml.safe_dump(kubeconfig(str(api.url).rstrip("/"))))
        env = {
            **{k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"},
            **CREDENTIALS,
            "PYTHONPATH": os.pathsep.join(
                [str(REPO / p) for p in ("core", "operator", "trainer", "cli")]
                + [os.environ.get("PYTHONPATH", "")]
            ),
            "KUBECONFIG": str(kubeconfig_path),
            "FINETUNE_STORE": f"s3://{bucket}",
            "FINETUNE_S3_ENDPOINT": s3_endpoint,
            "FINETUNE_TRAINER_IMAGE": "registry.test/finetune/trainer:chaos",
            "FINETUNE_PROGRESS_INTERVAL": str(config.progress_interval),
            "FINETUNE_HEALTH_PORT": str(free_port()),
            "FINETUNE_METRICS_PORT": "0",
            "FINETUNE_LEADER_IDENTITY": IDENTITY,
            "FINETUNE_LEASE_NAMESPACE": "finetune-system",
            "FINETUNE_LEASE_DURATION": "8",
            "FINETUNE_LEASE_RENEW_DEADLINE": "6",
            "FINETUNE_LEASE_RETRY_PERIOD": "1",
            "FINETUNE_API_TIMEOUT": str(config.api_timeout),
        }
        cluster = Cluster(api, store, store.uri("datasets/chat.jsonl"))
        kinds = list(SCENARIOS)
        scenarios = {f"chaos-{i:03d}": kinds[i % len(kinds)] for i in range(config.lifecycles)}
        for name in scenarios:
            await cluster.create(small_job(name, cluster.dataset))
        operator = Operator(workdir, env)
        stop_jobs, settled = asyncio.Event(), asyncio.Event()
        controller = JobController(cluster, scenarios, random.Random(rng.random()), config)

        def report(kills: int) -> None:
            if config.verbose:
                done = sum(
                    cluster.status(name).get("phase") in TERMINAL_PHASES for name in scenarios
                )
                print(
                    f"  {time.monotonic() - started:6.0f} s: {kills} kills, "
                    f"{done}/{len(scenarios)} lifecycles terminal",
                    flush=True,
                )

        tasks = [
            asyncio.create_task(controller.run(stop_jobs)),
            asyncio.create_task(
                supervise(operator, config, random.Random(rng.random()), result, settled, report)
            ),
        ]

        def terminal() -> bool:
            return all(
                (s := cluster.status(name)).get("phase") in TERMINAL_PHASES
                and s.get("observedGeneration") == 1
                for name in scenarios
            )

        try:
            deadline = None
            while not (deadline and (terminal() or time.monotonic() > deadline)):
                await asyncio.sleep(0.2)
                for task in tasks:
                    if task.done():
                        task.result()  # raises what stopped it
                if deadline is None and result.kills >= config.kills:
                    deadline = time.monotonic() + config.settle_timeout
                    result.kill_seconds = time.monotonic() - started
            result.settle_seconds = time.monotonic() - started
            settled.set()
            # Whatever the operator does after settling must not change the outcome.
            await asyncio.sleep(2 * config.progress_interval)
        finally:
            settled.set()
            stop_jobs.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            code = await operator.stop()
            if code not in (None, 0):
                result.exits.append(code)
        result.wall_seconds = time.monotonic() - started
        if faults is not None:
            result.faults = faults.injected
        await asyncio.to_thread(check, cluster, scenarios, result)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lifecycles", type=int, default=20)
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--seed", type=int, default=None, help="default: drawn, and printed")
    parser.add_argument("--faults", type=float, default=0.0, help="share of API requests faulted")
    parser.add_argument("--stage-seconds", type=float, nargs=2, default=None)
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep the operator's log here (default: a temporary directory)",
    )
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    config = ChaosConfig(
        lifecycles=args.lifecycles,
        kills=args.kills,
        seed=seed,
        fault_rate=args.faults,
        stage_seconds=tuple(args.stage_seconds) if args.stage_seconds else None,
        verbose=True,
    )
    print(f"chaos: seed {seed}, {config.lifecycles} lifecycles, {config.kills} kills", flush=True)
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the S3 server's request lines
    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    s3.start()
    host, port = s3.get_host_and_port()
    try:
        if args.workdir:
            args.workdir.mkdir(parents=True, exist_ok=True)
            result = asyncio.run(run_chaos(config, args.workdir, f"http://{host}:{port}"))
        else:
            with tempfile.TemporaryDirectory(prefix="chaos-") as workdir:
                result = asyncio.run(run_chaos(config, Path(workdir), f"http://{host}:{port}"))
    finally:
        s3.stop()
    for line in result.lines():
        print(line)
    return 0 if result.converged else 1


if __name__ == "__main__":
    sys.exit(main())
