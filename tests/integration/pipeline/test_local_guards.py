"""`finetune run` guards: one run of a job at a time, and no stage outliving its run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from finetune_cli.local.lock import lock_key, run_lock
from finetune_core.store import LocalStore
from tests.integration.pipeline.runner import finetune, write_manifest


def test_a_second_run_of_the_same_job_exits_naming_the_holder(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    manifest = write_manifest(tmp_path)
    with run_lock(store, "local", "quickstart"):
        second = finetune("run", str(manifest), "--store", store.uri(), cwd=tmp_path, timeout=120)
    assert second.returncode == 1, second.stdout
    words = " ".join(second.stdout.split())
    assert f"local/quickstart is being run by process {os.getpid()}" in words
    assert not store.exists("runs/local/quickstart/g1/config.json")  # it started nothing
    assert not store.exists(lock_key("local", "quickstart"))  # released


def test_a_lock_left_by_a_dead_process_of_this_host_is_taken_over(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    store.put_json(
        lock_key("local", "quickstart"),
        {"pid": int(gone.stdout), "host": os.uname().nodename, "since": "2026-01-01T00:00:00Z"},
    )
    with run_lock(store, "local", "quickstart"):
        assert store.get_json(lock_key("local", "quickstart"))["pid"] == os.getpid()


PARENT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from rich.console import Console
    from rich.progress import Progress
    from finetune_cli.local.processes import StageProcess, Watcher

    child = StageProcess(
        [sys.executable, "-c", "import time; time.sleep(120)"],
        {},
        Path(sys.argv[1]),
        Watcher(Progress(console=Console(file=open("/dev/null", "w")))),
    )
    child.start()
    print(child._process.pid, flush=True)
    time.sleep(120)
    """
)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A child that exited but was not reaped yet (its parent died) is gone for our purpose.
    status = Path(f"/proc/{pid}/status")
    return not status.exists() or "State:\tZ" not in status.read_text()


def test_a_stage_dies_with_a_finetune_run_that_is_killed(tmp_path: Path) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path / "stage.log")],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    assert pid_alive(child)
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=30)
    deadline = time.monotonic() + 30
    while pid_alive(child):
        assert time.monotonic() < deadline, f"stage {child} outlived its killed parent"
        time.sleep(0.1)
