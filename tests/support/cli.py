"""The `finetune` command as the tests run it: a real process of this interpreter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

FINETUNE = [sys.executable, "-m", "finetune_cli"]
TIMEOUT = 1500


def finetune(
    *args: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """`finetune ARGS...` run to its end; stdout and stderr together in .stdout."""
    return subprocess.run(
        [*FINETUNE, *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
