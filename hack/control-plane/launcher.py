#!/usr/bin/env python3
"""A throwaway Kubernetes control plane on loopback: etcd, kube-apiserver and (for garbage
collection) a kube-controller-manager that runs no workload controllers, with a MinIO
server beside it for the artifact store (DIR/s3.json has its endpoint and credentials).

    hack/control-plane/up DIR     start it, wait until /readyz answers, print DIR/kubeconfig
    hack/control-plane/down DIR   stop every process `up DIR` started

Everything lives in DIR: etcd's data, the certificates (a CA, the serving certificate, the
admin client certificate in group system:masters), the service-account signing keys, the
audit log of every write (audit.log, one JSON event a line), each process's log and the
state file that `down` reads. Ports are free loopback ports chosen at start, so several
control planes can run at once. The binaries come from `hack/control-plane/build` (or the
directory named by FINETUNE_CONTROL_PLANE_BIN). Uses only the Python standard library and
the openssl command; no argument is ever passed through a shell.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
STATE = "control-plane.json"
READY_TIMEOUT = 120.0
STOP_TIMEOUT = 20.0
# Only what a test needs beside the API itself: owners' deletion cascades, namespaces are
# emptied, every namespace gets its `default` ServiceAccount. No Job or Pod controllers:
# tests play those.
CONTROLLERS = "garbage-collector-controller,namespace-controller,serviceaccount-controller"

AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: None
    resources: [{group: "", resources: [events]}, {group: events.k8s.io, resources: [events]}]
  - level: Request
    verbs: [create, update, patch, delete, deletecollection]
  - level: None
"""


class ControlPlaneError(RuntimeError):
    pass


# ---------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def run(argv: Sequence[str | Path]) -> None:
    subprocess.run([str(a) for a in argv], check=True, capture_output=True)


def binaries() -> Path:
    override = os.environ.get("FINETUNE_CONTROL_PLANE_BIN")
    if override:
        return Path(override)
    built = subprocess.run([str(HERE / "build")], check=False, stdout=subprocess.PIPE, text=True)
    if built.returncode != 0:
        raise ControlPlaneError("building the control plane failed (see the messages above)")
    return Path(built.stdout.strip().splitlines()[-1])


def alive(pid: int, marker: str) -> bool:
    """True when `pid` runs and its command line holds `marker` (not a reused pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return marker.encode() in cmdline


# ---------------------------------------------------------------- certificates


def make_certificates(pki: Path) -> None:
    """A CA, the apiserver's serving certificate (127.0.0.1, localhost), an admin client
    certificate (system:masters) and the service-account signing key pair."""
    pki.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run(
        [
            *("openssl", "req", "-x509", *ec, "-days", "30", "-subj", "/CN=finetune-test-ca"),
            *("-keyout", pki / "ca.key", "-out", pki / "ca.crt"),
            *("-addext", "basicConstraints=critical,CA:TRUE"),
            *("-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"),
        ]
    )
    leaves = {
        "serving": (
            "/CN=kube-apiserver",
            "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\n"
            "extendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n",
        ),
        "admin": (
            "/O=system:masters/CN=finetune-admin",
            "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n",
        ),
    }
    for name, (subject, extensions) in leaves.items():
        ext = pki / f"{name}.ext"
        ext.write_text(extensions)
        run(
            [
                *("openssl", "req", "-new", *ec, "-subj", subject),
                *("-keyout", pki / f"{name}.key", "-out", pki / f"{name}.csr"),
            ]
        )
        run(
            [
                *("openssl", "x509", "-req", "-in", pki / f"{name}.csr", "-days", "30"),
                *("-CA", pki / "ca.crt", "-CAkey", pki / "ca.key", "-CAcreateserial"),
                *("-extfile", ext, "-out", pki / f"{name}.crt"),
            ]
        )
    run(["openssl", "genpkey", "-algorithm", "RSA", "-out", pki / "sa.key"])
    run(["openssl", "pkey", "-in", pki / "sa.key", "-pubout", "-out", pki / "sa.pub"])


def kubeconfig(server: str, pki: Path) -> dict[str, object]:
    def data(name: str) -> str:
        return base64.b64encode((pki / name).read_bytes()).decode()

    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "control-plane",
                "cluster": {"server": server, "certificate-authority-data": data("ca.crt")},
            }
        ],
        "users": [
            {
                "name": "admin",
                "user": {
                    "client-certificate-data": data("admin.crt"),
                    "client-key-data": data("admin.key"),
                },
            }
        ],
        "contexts": [{"name": "admin", "context": {"cluster": "control-plane", "user": "admin"}}],
        "current-context": "admin",
    }


# ---------------------------------------------------------------- processes


def start(name: str, argv: Sequence[str | Path], directory: Path) -> subprocess.Popen[bytes]:
    log = (directory / f"{name}.log").open("ab")
    with log:
        return subprocess.Popen(
            [str(a) for a in argv],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=directory,
            start_new_session=True,  # outlives `up`; `down` stops it
        )


def log_tail(directory: Path, name: str, lines: int = 30) -> str:
    try:
        text = (directory / f"{name}.log").read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def wait_until(
    check_url: str,
    process: subprocess.Popen[bytes],
    name: str,
    directory: Path,
    context: ssl.SSLContext | None = None,
    timeout: float = READY_TIMEOUT,
) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ControlPlaneError(
                f"{name} exited with {process.returncode}:\n{log_tail(directory, name)}"
            )
        try:
            with urllib.request.urlopen(check_url, timeout=5, context=context) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError) as error:
            last = str(error)
        time.sleep(0.2)
    raise ControlPlaneError(
        f"{name} not ready within {timeout:.0f} s ({last}):\n{log_tail(directory, name)}"
    )


def admin_context(pki: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    return context


def up(directory: Path, controller_manager: bool = True) -> Path:
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    state_file = directory / STATE
    if state_file.exists():
        state = json.loads(state_file.read_text())
        if any(alive(pid, str(directory)) for pid in state["pids"].values()):
            raise ControlPlaneError(f"a control plane already runs in {directory}")
    bin_dir = binaries()
    pki = directory / "pki"
    make_certificates(pki)
    (directory / "audit-policy.yaml").write_text(AUDIT_POLICY)

    pids: dict[str, int] = {}
    state = {"directory": str(directory), "bin": str(bin_dir), "pids": pids}
    try:
        etcd_client, etcd_peer = free_port(), free_port()
        client_url = f"http://127.0.0.1:{etcd_client}"
        peer_url = f"http://127.0.0.1:{etcd_peer}"
        etcd = start(
            "etcd",
            [
                bin_dir / "etcd",
                "--name=control-plane",
                f"--data-dir={directory / 'etcd'}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=control-plane={peer_url}",
                "--unsafe-no-fsync=true",  # a test server: speed over durability
                "--log-level=warn",
            ],
            directory,
        )
        pids["etcd"] = etcd.pid
        state_file.write_text(json.dumps(state, indent=2))
        wait_until(f"{client_url}/health", etcd, "etcd", directory, timeout=30)

        port = free_port()
        server = f"https://127.0.0.1:{port}"
        apiserver = start(
            "kube-apiserver",
            [
                bin_dir / "kube-apiserver",
                f"--etcd-servers={client_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                # No endpoints for the `kubernetes` Service: nothing in a test runs in a pod,
                # and the reconciler refuses a loopback address.
                "--endpoint-reconciler-type=none",
                f"--secure-port={port}",
                f"--cert-dir={directory / 'apiserver'}",
                f"--tls-cert-file={pki / 'serving.crt'}",
                f"--tls-private-key-file={pki / 'serving.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--allow-privileged=true",
                f"--audit-policy-file={directory / 'audit-policy.yaml'}",
                f"--audit-log-path={directory / 'audit.log'}",
                "--audit-log-mode=blocking",
            ],
            directory,
        )
        pids["kube-apiserver"] = apiserver.pid
        state["server"] = server
        state_file.write_text(json.dumps(state, indent=2))
        wait_until(f"{server}/readyz", apiserver, "kube-apiserver", directory, admin_context(pki))

        config_path = directory / "kubeconfig"
        config_path.write_text(json.dumps(kubeconfig(server, pki), indent=2))
        config_path.chmod(0o600)

        if (bin_dir / "minio").exists():
            start_minio(bin_dir, directory, pids, state)
            state_file.write_text(json.dumps(state, indent=2))

        if controller_manager and (bin_dir / "kube-controller-manager").exists():
            manager = start(
                "kube-controller-manager",
                [
                    bin_dir / "kube-controller-manager",
                    f"--kubeconfig={config_path}",
                    f"--controllers={CONTROLLERS}",
                    "--leader-elect=false",
                    "--secure-port=0",
                    "--use-service-account-credentials=false",
                ],
                directory,
            )
            pids["kube-controller-manager"] = manager.pid
            state_file.write_text(json.dumps(state, indent=2))
            # It serves no health endpoint without its port: it is working once its
            # serviceaccount controller has given the default namespace its ServiceAccount.
            wait_until(
                f"{server}/api/v1/namespaces/default/serviceaccounts/default",
                manager,
                "kube-controller-manager",
                directory,
                admin_context(pki),
            )
        return config_path
    except BaseException:
        down(directory)
        raise


def start_minio(
    bin_dir: Path, directory: Path, pids: dict[str, int], state: dict[str, object]
) -> None:
    """A MinIO server (S3) on a free loopback port, data in DIR/minio, its console off. Its
    endpoint and root credentials go to DIR/s3.json (readable by the owner only)."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    credentials = {"accessKey": "finetune-admin", "secretKey": secrets.token_hex(16)}
    environment = {
        **os.environ,
        "MINIO_ROOT_USER": credentials["accessKey"],
        "MINIO_ROOT_PASSWORD": credentials["secretKey"],
        "MINIO_BROWSER": "off",
        "MINIO_UPDATE": "off",
    }
    log = (directory / "minio.log").open("ab")
    with log:
        minio = subprocess.Popen(
            [
                str(bin_dir / "minio"),
                "server",
                "--quiet",
                f"--address=127.0.0.1:{port}",
                f"--console-address=127.0.0.1:{free_port()}",
                str(directory / "minio"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=directory,
            env=environment,
            start_new_session=True,
        )
    pids["minio"] = minio.pid
    wait_until(f"{endpoint}/minio/health/ready", minio, "minio", directory, timeout=60)
    s3 = directory / "s3.json"
    s3.touch(mode=0o600)
    s3.write_text(json.dumps({"endpoint": endpoint, **credentials}, indent=2))
    state["s3"] = endpoint


def down(directory: Path) -> None:
    directory = directory.resolve()
    state_file = directory / STATE
    if not state_file.exists():
        return
    state = json.loads(state_file.read_text())
    marker = str(directory)
    # Reverse order of start: the controller manager, the API server, then etcd.
    for name, pid in reversed(list(state["pids"].items())):
        if not alive(pid, marker):
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while alive(pid, marker) and time.monotonic() < deadline:
            reap(pid)
            time.sleep(0.05)
        if alive(pid, marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            while alive(pid, marker):
                reap(pid)
                time.sleep(0.05)
        print(f"stopped {name} ({pid})", file=sys.stderr)
    state_file.unlink()


def reap(pid: int) -> None:
    """Collect a child that exited (when `up` and `down` ran in one process)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down"])
    parser.add_argument("directory", type=Path)
    parser.add_argument(
        "--no-controller-manager",
        action="store_true",
        help="start only etcd and kube-apiserver (no garbage collection)",
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            print(up(args.directory, controller_manager=not args.no_controller_manager))
        else:
            down(args.directory)
    except (ControlPlaneError, subprocess.CalledProcessError, OSError) as error:
        detail = getattr(error, "stderr", None)
        print(f"control-plane {args.command}: {error}", file=sys.stderr)
        if detail:
            print(detail.decode(errors="replace"), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
