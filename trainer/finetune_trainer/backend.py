"""Which library trains and serves the model, on which device, in which dtype.

FINETUNE_BACKEND chooses the backend:
- `auto` (the default): unsloth where a GPU is present and unsloth imports, else
  transformers + peft. A GPU whose unsloth fails to import falls back with a warning.
- `unsloth`: unsloth is required. Failing to import it is a StageFailure with the reason
  BackendUnavailable and the import error's message: never a silent fallback (the GPU
  images set this, so a broken unsloth cannot make a run twice as slow without a word).
- `transformers`: transformers + peft, also on a GPU; unsloth is never imported.

unsloth patches transformers, trl and peft when it is imported, so it must be imported
before them, and `import unsloth` raises on a machine without a GPU. `select_backend()`
therefore runs first in a process, before anything imports transformers; this module
imports only torch.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import math
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal, get_args

import torch

from finetune_trainer.stage import StageFailure, invalid_input

log = logging.getLogger(__name__)

Backend = Literal["unsloth", "transformers"]
BackendSetting = Literal["auto", "unsloth", "transformers"]

BACKEND_ENV = "FINETUNE_BACKEND"
BACKEND_UNAVAILABLE = "BackendUnavailable"
INVALID_BACKEND = "InvalidBackendSetting"


def backend_setting(environ: Mapping[str, str] = os.environ) -> BackendSetting:
    """FINETUNE_BACKEND's value (default auto); an unknown value is an input error."""
    value = environ.get(BACKEND_ENV, "").strip().lower() or "auto"
    for setting in get_args(BackendSetting):
        if value == setting:
            return setting
    allowed = ", ".join(get_args(BackendSetting))
    raise invalid_input(INVALID_BACKEND, f"{BACKEND_ENV}={value!r}: must be one of {allowed}")


PATCHED_BY_UNSLOTH = ("transformers", "trl", "peft")


def import_unsloth() -> None:
    """Import unsloth; it must precede transformers, trl and peft, so say when it does not
    (a bug in the caller: unsloth's patches would then be partial)."""
    early = [name for name in PATCHED_BY_UNSLOTH if name in sys.modules]
    if early:
        log.warning("%s imported before unsloth: its patches may not apply", ", ".join(early))
    importlib.import_module("unsloth")


def choose_backend(
    setting: BackendSetting, gpu: bool, load_unsloth: Callable[[], None] = import_unsloth
) -> Backend:
    """The backend for a setting on this machine; `load_unsloth` imports unsloth."""
    if setting == "transformers" or (setting == "auto" and not gpu):
        return "transformers"
    try:
        load_unsloth()
    except Exception as error:  # unsloth raises many kinds of errors on unsupported setups
        cause = f"{type(error).__name__}: {error}"
        if setting == "unsloth":
            raise StageFailure(
                BACKEND_UNAVAILABLE, f"{BACKEND_ENV}=unsloth but unsloth cannot be used: {cause}"
            ) from error
        log.warning("GPU present but unsloth is unavailable (%s); using transformers", cause)
        return "transformers"
    if not gpu:  # unsloth imported without a GPU: it cannot train here all the same
        raise StageFailure(BACKEND_UNAVAILABLE, f"{BACKEND_ENV}=unsloth but torch sees no GPU")
    return "unsloth"


@functools.cache
def select_backend() -> Backend:
    """The process's backend, chosen once from FINETUNE_BACKEND (see the module docstring)."""
    setting = backend_setting()
    backend = choose_backend(setting, torch.cuda.is_available())
    log.info("backend %s (%s=%s)", backend, BACKEND_ENV, setting, extra={"backend": backend})
    return backend


def device_name() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype the weights compute in: the spec's precision on a GPU, fp32 on a CPU."""
    if not torch.cuda.is_available():
        return torch.float32
    if precision == "bf16" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if precision in ("bf16", "fp16"):
        return torch.float16
    return torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def bitsandbytes_usable() -> bool:
    """bitsandbytes needs a GPU; importing it on a CPU-only machine only warns."""
    return torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None


def cgroup_cpu_limit(cpu_max: str) -> int | None:
    """CPUs a cgroup v2 `cpu.max` line ("<quota> <period>" or "max <period>") allows."""
    quota, _, period = cpu_max.strip().partition(" ")
    if quota == "max" or not period:
        return None
    return max(1, math.ceil(int(quota) / int(period)))


def limit_cpu_threads(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> None:
    """Size torch's thread pool to the container's CPU limit. torch counts the host's cores,
    and more busy threads than the quota allows get throttled: much slower, not faster."""
    try:
        limit = cgroup_cpu_limit(cpu_max.read_text())
    except (OSError, ValueError):
        return
    if limit is not None and limit < torch.get_num_threads():
        log.info(
            "CPU limit %d: using %d threads instead of %d", limit, limit, torch.get_num_threads()
        )
        torch.set_num_threads(limit)
