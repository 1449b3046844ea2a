"""How the operator holds N FineTuneJobs created at once.

The operator runs as its own process (`python -m finetune_cli operator`, as in a pod), so
its CPU seconds and memory are its own; the Kubernetes API is the emulator the operator's
tests use, run in a process of its own too (default), or the real kube-apiserver of
hack/control-plane (`--server apiserver`). This script plays the Job controller and the
pods: every Job it sees runs for `--stage-seconds`, writes the files its stage leaves
(tests/support/stage_files.py) and succeeds. The store is the control plane's MinIO beside
the real API server, moto's S3 server (in this process) beside the emulator.

Printed: p50/p95/max from create to the training Job (as this script saw them and, against
the real API server, as its audit log times them) and from the training Job's success to
the benchmark Job; the CPU each process on these cores spent per FineTuneJob admitted, from
the first create to the last training Job (the operator, the API server, its neighbours and
this script); the operator's API writes per lifecycle (counted by the emulator, or from the
API server's audit log), by kind; the operator's CPU seconds (per lifecycle, too) and RSS;
the API server's own CPU seconds; then the operator's CPU with N settled objects over
`--settled-seconds`.

    python benchmarks/operator_scale.py --count 100 [--server emulator|apiserver]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import ssl
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: the tests' helpers are imported from REPO
    sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402
import yaml  # noqa: E402

from finetune_core.layout import RunPaths  # noqa: E402
from finetune_core.sampling import percentile  # noqa: E402
from finetune_core.store import S3Store  # noqa: E402
from finetune_operator.builders import LABEL_JOB, LABEL_STAGE  # noqa: E402
from tests.integration.operator.harness import (  # noqa: E402
    FTJ_URL,
    JOBS_URL,
    NAMESPACE,
    Cluster,
)
from tests.support import stage_files  # noqa: E402
from tests.support.manifests import small_job  # noqa: E402

MOTO_CREDENTIALS = {"accessKey": "scale-access-key", "secretKey": "scale-secret"}
WRITES = ("CREATE", "UPDATE", "DELETE")
CLK_TCK = os.sysconf("SC_CLK_TCK")
LEASE_NAMESPACE = "finetune-system"


# ---------------------------------------------------------------- processes


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (its reaped children not counted)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_by_process(pids: Mapping[str, int]) -> dict[str, float]:
    return {name: cpu_seconds(pid) for name, pid in pids.items()}


def admission_cost(
    before: Mapping[str, float],
    after: Mapping[str, float],
    admitted: int,
    seconds: float,
    cores: int,
) -> str:
    """What the burst of admissions (from the first create to the last training Job) cost
    each process on the cores, in CPU milliseconds per FineTuneJob admitted, and how busy
    they kept the cores together. A latency target needs this much CPU per admission, at
    the rate the objects come in, from cores that every process here shares."""
    spent = {name: after[name] - before[name] for name in before}
    total = sum(spent.values())
    each = ", ".join(f"{name} {1000 * cpu / admitted:.1f}" for name, cpu in spent.items())
    return (
        f"admission burst, {admitted} training Jobs in {seconds:.1f} s: CPU ms per FineTuneJob: "
        f"{each}; together {1000 * total / admitted:.1f} ms, "
        f"{100 * total / (seconds * cores):.0f} % of {cores} cores"
    )


def memory_mb(pid: int) -> tuple[float, float]:
    """(RSS now, peak RSS) in MB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# ---------------------------------------------------------------- the emulator's process


async def serve_emulator() -> None:
    """`operator_scale.py emulator`: the emulator on a free port; prints its URL, then on
    each line read from stdin the operator's requests so far (by action and resource) as
    JSON; exits at EOF."""
    import kmock

    from tests.integration.operator.emulator import OPERATOR_AGENTS, ApiServer
    from tests.integration.operator.harness import declare_resources

    async with ApiServer() as api, kmock.Server(api):
        declare_resources(api)
        print(str(api.url).rstrip("/"), flush=True)
        reader = asyncio.StreamReader()
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while await reader.readline():
            requests: Counter[str] = Counter()
            for request in api.served():
                agent = next(
                    (v for k, v in request.headers.items() if k.lower() == "user-agent"), ""
                )
                if agent.startswith(OPERATOR_AGENTS):
                    kind = str(request.resource.plural if request.resource else "?")
                    if request.subresource:
                        kind += f"/{request.subresource}"
                    action = str(getattr(request.action, "value", request.action))
                    requests[f"{action} {kind}"] += 1
            print(json.dumps(requests), flush=True)


class Backend:
    """An API server for the benchmark: where it is, how to reach it, what it cost."""

    url: str
    pids: dict[str, int]  # the API server's own processes
    neighbours: dict[str, int]  # the other processes beside it on these cores
    operator_kubeconfig: Path
    ssl: ssl.SSLContext | bool = False

    async def start(self, workdir: Path) -> None:
        raise NotImplementedError

    async def writes(self) -> Counter[str]:
        raise NotImplementedError

    async def admissions(self) -> list[float]:
        """Seconds from each FineTuneJob's creation to its training Job's, as the API server
        timed them (none where it keeps no such record)."""
        return []

    def s3(self) -> dict[str, str] | None:
        """The S3 server beside this API server (endpoint, accessKey, secretKey), if any."""
        return None

    async def stop(self) -> None:
        raise NotImplementedError


class EmulatorBackend(Backend):
    async def start(self, workdir: Path) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "emulator",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert self.process.stdout is not None
        self.url = (await self.process.stdout.readline()).decode().strip()
        self.pids = {"emulator": self.process.pid}
        self.neighbours = {}
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "operator", "user": {}}],
            "contexts": [
                {"name": "emulator", "context": {"cluster": "emulator", "user": "operator"}}
            ],
            "current-context": "emulator",
        }
        self.operator_kubeconfig = workdir / "kubeconfig"
        self.operator_kubeconfig.write_text(yaml.safe_dump(config))

    async def writes(self) -> Counter[str]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(b"writes\n")
        await self.process.stdin.drain()
        return Counter(json.loads(await self.process.stdout.readline()))

    async def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), 10)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


class ApiServerBackend(Backend):
    """hack/control-plane: etcd and kube-apiserver (and the controller manager); the
    operator authenticates as the chart's ServiceAccount."""

    async def start(self, workdir: Path) -> None:
        from tests.controlplane import server
        from tests.integration.operator import realserver

        self.directory = Path(tempfile.mkdtemp(prefix="finetune-cp-"))
        self.plane = await asyncio.to_thread(server.start, self.directory)
        await asyncio.to_thread(self.plane.install_crd)
        admin = self.plane.admin()
        await asyncio.to_thread(realserver.prepare_namespace, admin)
        await asyncio.to_thread(
            admin.create,
            "/api/v1/namespaces",
            {"metadata": {"name": LEASE_NAMESPACE}},
            True,
        )
        self.operator_kubeconfig = await asyncio.to_thread(
            realserver.operator_kubeconfig, self.plane, "cluster"
        )
        self.url = self.plane.server
        state = json.loads((self.directory / "control-plane.json").read_text())
        self.pids = {k: v for k, v in state["pids"].items() if k in ("kube-apiserver", "etcd")}
        self.neighbours = {
            k: v for k, v in state["pids"].items() if k in ("minio", "kube-controller-manager")
        }
        context = ssl.create_default_context(cafile=str(self.plane.pki / "ca.crt"))
        context.load_cert_chain(
            str(self.plane.pki / "admin.crt"), str(self.plane.pki / "admin.key")
        )
        self.ssl = context
        self.account = yaml.safe_load(self.operator_kubeconfig.read_text())["users"][0]["name"]

    async def writes(self) -> Counter[str]:
        events = await asyncio.to_thread(self.plane.audit)
        writes: Counter[str] = Counter()
        verbs = {"create": "CREATE", "patch": "UPDATE", "update": "UPDATE", "delete": "DELETE"}
        for event in events:
            if (
                event.get("stage") != "ResponseComplete"
                or event.get("verb") not in verbs
                or (event.get("user") or {}).get("username") != self.account
            ):
                continue
            ref = event.get("objectRef") or {}
            kind = ref.get("resource", "?") + (
                f"/{ref['subresource']}" if "subresource" in ref else ""
            )
            writes[f"{verbs[event['verb']]} {kind}"] += 1
        # The audit policy leaves Events out (hack/control-plane); they are counted from the
        # API: the FineTuneJobs' Events, each as often as it was posted.
        posted = await asyncio.to_thread(
            self.plane.admin().items, f"/api/v1/namespaces/{NAMESPACE}/events"
        )
        writes["CREATE events"] = sum(
            int(event.get("count") or 1)
            for event in posted
            if (event.get("involvedObject") or {}).get("kind") == "FineTuneJob"
        )
        return writes

    async def admissions(self) -> list[float]:
        return admission_seconds(await asyncio.to_thread(self.plane.audit))

    def s3(self) -> dict[str, str] | None:
        return self.plane.s3()

    async def stop(self) -> None:
        from tests.controlplane import server

        await asyncio.to_thread(server.stop, self.directory)


def admission_seconds(audit: Iterable[Mapping[str, Any]]) -> list[float]:
    """From an audit log: when the API server answered each FineTuneJob's creation, and when
    it answered its training Job's. Unlike the script's own times (the answer to its create,
    then its watch's sight of the Job), neither waits for this script's event loop, which
    shares the cores with everything measured."""
    created: dict[str, datetime] = {}
    trained: dict[str, datetime] = {}
    for event in audit:
        ref = event.get("objectRef") or {}
        code = (event.get("responseStatus") or {}).get("code")
        if (
            event.get("stage") != "ResponseComplete"
            or event.get("verb") != "create"
            or code != 201
            or "subresource" in ref
        ):
            continue
        meta = (event.get("requestObject") or {}).get("metadata") or {}
        labels = meta.get("labels") or {}
        at = datetime.fromisoformat(event["stageTimestamp"])
        if ref.get("resource") == "finetunejobs":
            created[meta["name"]] = at
        elif ref.get("resource") == "jobs" and labels.get(LABEL_STAGE) == "train":
            trained[labels[LABEL_JOB]] = at
    return [(trained[name] - at).total_seconds() for name, at in created.items() if name in trained]


# ---------------------------------------------------------------- the Job controller


class HttpCluster(Cluster):
    """The tests' moves on a cluster (a Job's status as the Job controller writes it),
    made over HTTP to either backend."""

    session: aiohttp.ClientSession
    base: str
    context: ssl.SSLContext | bool

    async def _request(self, method: str, url: str, body: Any, content_type: str) -> Any:
        for attempt in range(20):
            async with self.session.request(
                method,
                self.base + url,
                data=None if body is None else json.dumps(body),
                headers={"Content-Type": content_type, "User-Agent": "operator-scale/1"},
                ssl=self.context,
            ) as response:
                payload = await response.json(content_type=None)
                if response.status in (429, 500, 503) and attempt < 19:
                    await asyncio.sleep(0.5)
                    continue
                assert response.status < 300, f"{method} {url}: {response.status} {payload}"
                return payload
        raise AssertionError("unreachable")

    async def watch(self, url: str, params: dict[str, str]) -> AsyncIterator[dict[str, Any]]:
        """Events of a watch, reconnecting from the last version seen when it ends."""
        version = ""
        while True:
            query = {**params, "watch": "true", "allowWatchBookmarks": "false"}
            if version:
                query["resourceVersion"] = version
            timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
            async with self.session.get(
                self.base + url, params=query, ssl=self.context, timeout=timeout
            ) as response:
                if response.status == 429:  # the server's watch cache is still filling
                    await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
                    continue
                assert response.status == 200, f"watch {url}: {response.status}"
                async for line in response.content:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if event.get("type") == "ERROR":
                        version = ""  # too old: start again from a full snapshot
                        break
                    version = event["object"]["metadata"].get("resourceVersion", version)
                    yield event


@dataclass
class Timeline:
    created: dict[str, float] = field(default_factory=dict)
    train_job: dict[str, float] = field(default_factory=dict)
    trained: dict[str, float] = field(default_factory=dict)
    bench_job: dict[str, float] = field(default_factory=dict)
    promoted: dict[str, float] = field(default_factory=dict)
    phases: dict[str, str] = field(default_factory=dict)
    # Wall clock minus the monotonic clock of the times above: to line them up with logs.
    clock: float = field(default_factory=lambda: time.time() - time.monotonic())


async def play_jobs(
    cluster: HttpCluster,
    timeline: Timeline,
    stage_seconds: float,
    tasks: set[asyncio.Task[None]],
    on_training_job: Callable[[], None],
) -> None:
    """Watch the operator's Jobs; each one runs, writes its stage's files and succeeds.
    `on_training_job` is called as each new training Job is seen."""
    seen: set[str] = set()

    async def run(name: str, owner: str, stage: str) -> None:
        run_paths = RunPaths(NAMESPACE, owner, int(name.rsplit("-g", 1)[1].split("-")[0]))
        await asyncio.sleep(stage_seconds / 2)
        if stage == "train":
            await asyncio.to_thread(stage_files.progress, cluster.store, run_paths, 1, 4)
        await cluster.job_running(name)
        await asyncio.sleep(stage_seconds / 2)
        if stage == "train":
            await asyncio.to_thread(stage_files.trained, cluster.store, run_paths)
            timeline.trained[owner] = time.monotonic()
            await cluster.job_succeeded(name)
        else:
            await asyncio.to_thread(stage_files.benchmarked, cluster.store, run_paths)
            await cluster.job_succeeded(name)

    async for event in cluster.watch(JOBS_URL, {"labelSelector": LABEL_JOB}):
        job = event["object"]
        name = job["metadata"]["name"]
        if event["type"] != "ADDED" or name in seen:
            continue
        seen.add(name)
        labels = job["metadata"].get("labels") or {}
        owner, stage = labels[LABEL_JOB], labels[LABEL_STAGE]
        (timeline.train_job if stage == "train" else timeline.bench_job)[owner] = time.monotonic()
        if stage == "train":
            on_training_job()
        task = asyncio.create_task(run(name, owner, stage))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


async def follow_phases(cluster: HttpCluster, timeline: Timeline, done: asyncio.Event) -> None:
    """Each FineTuneJob's phase, from a watch: each change arrives once. (This listed all
    of them every half second before: at 1,000 objects, a response of several MB for the
    API server to build and this script to parse, twice a second, on the cores the
    operator is measured on.)"""
    async for event in cluster.watch(FTJ_URL, {}):
        obj = event["object"]
        name = obj["metadata"]["name"]
        phase = (obj.get("status") or {}).get("phase") or ""
        timeline.phases[name] = phase
        if phase == "Promoted" and name not in timeline.promoted:
            timeline.promoted[name] = time.monotonic()
        if timeline.created and len(timeline.promoted) == len(timeline.created):
            done.set()


# ---------------------------------------------------------------- the run


def percentiles(values: list[float]) -> str:
    if not values:
        return "none"
    return (
        f"p50 {percentile(values, 50):.2f} s, p95 {percentile(values, 95):.2f} s, "
        f"max {max(values):.2f} s (n={len(values)})"
    )


async def wait_leading(health: str, operator_pid: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(health) as response:
                    if b'"leader": true' in await response.read():
                        return
            except aiohttp.ClientError:
                pass
            if not Path(f"/proc/{operator_pid}").exists():
                raise RuntimeError("the operator exited before leading")
            await asyncio.sleep(0.2)
    raise RuntimeError("the operator did not become the leader")


async def run(args: argparse.Namespace, workdir: Path) -> int:
    backend: Backend = ApiServerBackend() if args.server == "apiserver" else EmulatorBackend()
    await backend.start(workdir)
    try:
        with s3_server(backend) as s3:
            return await measure(args, workdir, backend, s3)
    finally:
        await backend.stop()


@contextlib.contextmanager
def s3_server(backend: Backend) -> Iterator[dict[str, str]]:
    """The control plane's MinIO beside the real API server (Go, as a cluster's store is);
    moto's S3 server, in this process, beside the emulator."""
    s3 = backend.s3()
    if s3 is not None:
        yield s3
        return
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    try:
        host, port = moto.get_host_and_port()
        yield {"endpoint": f"http://{host}:{port}", **MOTO_CREDENTIALS}
    finally:
        moto.stop()


async def measure(
    args: argparse.Namespace, workdir: Path, backend: Backend, s3: dict[str, str]
) -> int:
    bucket = f"scale-{uuid.uuid4().hex[:10]}"
    store = S3Store(
        bucket, endpoint=s3["endpoint"], access_key=s3["accessKey"], secret_key=s3["secretKey"]
    )
    store.ensure_bucket()
    store.put_bytes("datasets/chat.jsonl", b'{"messages": [{"role": "user", "content": "hi"}]}\n')
    health_port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"},
        "AWS_ACCESS_KEY_ID": s3["accessKey"],
        "AWS_SECRET_ACCESS_KEY": s3["secretKey"],
        "PYTHONPATH": os.pathsep.join(
            [str(REPO / p) for p in ("core", "operator", "trainer", "cli")]
            + [os.environ.get("PYTHONPATH", "")]
        ),
        "KUBECONFIG": str(backend.operator_kubeconfig),
        "FINETUNE_STORE": f"s3://{bucket}",
        "FINETUNE_S3_ENDPOINT": s3["endpoint"],
        "FINETUNE_TRAINER_IMAGE": "registry.test/finetune/trainer:scale",
        "FINETUNE_HEALTH_PORT": str(health_port),
        "FINETUNE_METRICS_PORT": "0",
        "FINETUNE_LEASE_NAMESPACE": LEASE_NAMESPACE,
        "FINETUNE_LOG_FORMAT": "json",
    }
    if args.progress_interval:
        env["FINETUNE_PROGRESS_INTERVAL"] = str(args.progress_interval)
    log_path = workdir / "operator.log"
    with log_path.open("wb") as log:
        operator = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "finetune_cli", "operator", env=env, stdout=log, stderr=log
        )
    tasks: set[asyncio.Task[None]] = set()
    background: list[asyncio.Task[None]] = []
    try:
        await wait_leading(f"http://127.0.0.1:{health_port}/healthz", operator.pid)
        if args.py_spy:
            await start_py_spy(args.py_spy, operator.pid, tasks)
        timeline = Timeline()
        # Every process on these cores: what the burst of admissions cost each of them.
        sharing = {
            "operator": operator.pid,
            **backend.pids,
            **backend.neighbours,
            "this script": os.getpid(),
        }
        burst_cpu0: dict[str, float] = {}
        burst: list[str] = []

        def on_training_job() -> None:
            if len(timeline.train_job) == args.count and not burst:
                burst.append(
                    admission_cost(
                        burst_cpu0,
                        cpu_by_process(sharing),
                        args.count,
                        time.monotonic() - started,
                        len(os.sched_getaffinity(0)),
                    )
                )

        connector = aiohttp.TCPConnector(limit=64)
        async with aiohttp.ClientSession(connector=connector) as session:
            cluster = HttpCluster(api=None, store=store, dataset=store.uri("datasets/chat.jsonl"))  # type: ignore[arg-type]
            cluster.session, cluster.base, cluster.context = session, backend.url, backend.ssl
            done = asyncio.Event()
            background += [
                asyncio.create_task(
                    play_jobs(cluster, timeline, args.stage_seconds, tasks, on_training_job)
                ),
                asyncio.create_task(follow_phases(cluster, timeline, done)),
            ]
            await asyncio.sleep(0.5)  # the watches are open
            cpu0 = cpu_seconds(operator.pid)
            api_cpu0 = cpu_by_process(backend.pids)
            writes0 = await backend.writes()
            rss0, _ = memory_mb(operator.pid)
            burst_cpu0.update(cpu_by_process(sharing))
            started = time.monotonic()
            names = [f"scale-{i:04d}" for i in range(args.count)]
            limit = asyncio.Semaphore(32)

            async def create(name: str) -> None:
                async with limit:
                    await cluster.create(small_job(name, cluster.dataset))
                    timeline.created[name] = time.monotonic()

            await asyncio.gather(*(create(name) for name in names))
            print(
                f"created {args.count} FineTuneJobs in {time.monotonic() - started:.1f} s",
                flush=True,
            )
            await watch_until(done, args.timeout, timeline, operator.pid, started, background)
            elapsed = time.monotonic() - started
            writes1 = await trailing_writes(backend)
            cpu1 = cpu_seconds(operator.pid)
            api_cpu1 = cpu_by_process(backend.pids)
            rss1, peak1 = memory_mb(operator.pid)
            # After the CPU readings: reading the audit log again takes seconds at 1,000.
            admitted = await backend.admissions()
            # Settled: every object Promoted. What does holding them cost?
            print(f"all Promoted; measuring {args.settled_seconds:.0f} s settled", flush=True)
            # From here, not from cpu1: reading the audit log above takes seconds at 1,000
            # objects, and the window is divided by settled_seconds.
            settled_cpu0 = cpu_seconds(operator.pid)
            await asyncio.sleep(args.settled_seconds)
            cpu2 = cpu_seconds(operator.pid)
            rss2, peak2 = memory_mb(operator.pid)
            writes2 = await backend.writes()
        report(
            args,
            timeline,
            elapsed=elapsed,
            operator_cpu=cpu1 - cpu0,
            api_cpu={k: api_cpu1[k] - api_cpu0[k] for k in api_cpu0},
            writes=writes1 - writes0,
            admitted=admitted,
            burst=burst[0] if burst else None,
            settled_writes=writes2 - writes1,
            rss=(rss0, rss1, rss2, max(peak1, peak2)),
            settled_cpu=cpu2 - settled_cpu0,
        )
        return 0 if len(timeline.promoted) == args.count else 1
    finally:
        for task in [*background, *tasks]:
            task.cancel()
        await asyncio.gather(*background, *tasks, return_exceptions=True)
        if operator.returncode is None:
            operator.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(operator.wait(), 30)
            except TimeoutError:
                operator.kill()
                await operator.wait()


async def start_py_spy(path: Path, pid: int, tasks: set[asyncio.Task[None]]) -> None:
    """Sample the operator with py-spy until it exits (flame graph at `path`)."""
    executable = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    command = [executable, "record", "--pid", str(pid), "--output", str(path)]
    command += ["--rate", "50", "--nonblocking", "--format", "raw"]
    spy = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )

    async def wait() -> None:
        await spy.wait()

    task = asyncio.create_task(wait())
    tasks.add(task)


async def trailing_writes(backend: Backend, deadline_seconds: float = 30.0) -> Counter[str]:
    """The writes so far, once the lifecycles' last ones are in: the operator posts an Event
    after the status patch that reported it, so the last object's Promoted Event may follow its
    phase by a moment. Done when nothing but the Lease changed over half a second."""

    def lifecycle(writes: Counter[str]) -> Counter[str]:
        return Counter({kind: n for kind, n in writes.items() if "leases" not in kind})

    last = await backend.writes()
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        now = await backend.writes()
        if lifecycle(now) == lifecycle(last):
            return now
        last = now
    return last


async def watch_until(
    done: asyncio.Event,
    timeout: float,
    timeline: Timeline,
    pid: int,
    started: float,
    watches: list[asyncio.Task[None]],
) -> None:
    deadline = time.monotonic() + timeout
    while not done.is_set():
        for watch in watches:  # the script's own watches never end: one that did failed
            if watch.done():
                watch.result()
                raise RuntimeError(f"{watch.get_coro()} ended")
        if time.monotonic() > deadline:
            phases = Counter(timeline.phases.values())
            raise RuntimeError(f"not every lifecycle was Promoted in {timeout:.0f} s: {phases}")
        if not Path(f"/proc/{pid}").exists():
            raise RuntimeError("the operator exited")
        try:
            await asyncio.wait_for(done.wait(), 10)
        except TimeoutError:
            print(
                f"  {time.monotonic() - started:5.0f} s: training Jobs {len(timeline.train_job)}, "
                f"benchmark Jobs {len(timeline.bench_job)}, Promoted {len(timeline.promoted)}",
                flush=True,
            )


def report(
    args: argparse.Namespace,
    timeline: Timeline,
    *,
    elapsed: float,
    operator_cpu: float,
    api_cpu: dict[str, float],
    writes: Counter[str],
    admitted: list[float],
    burst: str | None,
    settled_writes: Counter[str],
    rss: tuple[float, float, float, float],
    settled_cpu: float,
) -> None:
    n = args.count
    if args.timeline:
        args.timeline.write_text(json.dumps(asdict(timeline), indent=1))
    to_train = [timeline.train_job[k] - timeline.created[k] for k in timeline.train_job]
    to_bench = [
        timeline.bench_job[k] - timeline.trained[k]
        for k in timeline.bench_job
        if k in timeline.trained
    ]
    lease = sum(v for k, v in writes.items() if "leases" in k and k.split()[0] in WRITES)
    per_job = {k: v for k, v in writes.items() if "leases" not in k and k.split()[0] in WRITES}
    reads = {k: v for k, v in writes.items() if k.split()[0] not in WRITES}
    print(f"server {args.server}, {n} FineTuneJobs, stage {args.stage_seconds} s")
    print(f"all Promoted after {elapsed:.1f} s")
    print(f"create -> training Job: {percentiles(to_train)}")
    if admitted:
        print(f"create -> training Job, at the API server (audit log): {percentiles(admitted)}")
    print(f"training done -> benchmark Job: {percentiles(to_bench)}")
    if burst:
        print(burst)
    total = sum(per_job.values())
    detail = ", ".join(f"{k} {v / n:.2f}" for k, v in sorted(per_job.items()))
    print(f"API writes per lifecycle: {total / n:.2f} ({detail}); Lease writes {lease} in all")
    if reads:
        detail = ", ".join(f"{k} {v / n:.2f}" for k, v in sorted(reads.items()))
        print(f"API reads per lifecycle (emulator's count): {detail}")
    print(f"operator CPU: {operator_cpu:.1f} s, {operator_cpu / n:.3f} s per lifecycle")
    print(
        "API server CPU: "
        + ", ".join(f"{k} {v:.1f} s" for k, v in api_cpu.items())
        + f" ({sum(api_cpu.values()) / n:.3f} s per lifecycle)"
    )
    print(
        f"operator RSS: {rss[0]:.0f} MB before, {rss[1]:.0f} MB when all Promoted, "
        f"{rss[2]:.0f} MB settled, peak {rss[3]:.0f} MB"
    )
    settled = sum(v for k, v in settled_writes.items() if k.split()[0] in WRITES)
    print(
        f"settled: operator CPU {settled_cpu:.2f} s over {args.settled_seconds:.0f} s "
        f"({100 * settled_cpu / args.settled_seconds:.2f} % of a core), API writes {settled} "
        f"({', '.join(f'{k} {v}' for k, v in sorted(settled_writes.items()))})"
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["emulator"]:
        asyncio.run(serve_emulator())
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--server", choices=("emulator", "apiserver"), default="emulator")
    parser.add_argument("--stage-seconds", type=float, default=2.0, help="how long a pod runs")
    parser.add_argument("--settled-seconds", type=float, default=60.0)
    parser.add_argument(
        "--progress-interval", type=float, default=None, help="default: the operator's own"
    )
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--py-spy", type=Path, default=None, help="record a flame graph here")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the operator's log here")
    parser.add_argument(
        "--timeline", type=Path, default=None, help="write each object's times here (JSON)"
    )
    args = parser.parse_args(argv)
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        return asyncio.run(run(args, args.workdir))
    with tempfile.TemporaryDirectory(prefix="scale-") as workdir:
        return asyncio.run(run(args, Path(workdir)))


if __name__ == "__main__":
    sys.exit(main())
