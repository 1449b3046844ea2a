"""What a measurement ran on: the device, the libraries' versions, the backends."""

from __future__ import annotations

import importlib.metadata
import platform
from pathlib import Path

import torch

LIBRARIES = ("torch", "transformers", "peft", "accelerate", "unsloth", "bitsandbytes")


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape the measurement (installed ones only)."""
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    if torch.version.hip:
        versions["rocm"] = str(torch.version.hip)
    elif torch.version.cuda and torch.cuda.is_available():
        versions["cuda"] = str(torch.version.cuda)
    return versions


def describe_device(device: str) -> str:
    """'cuda: AMD Instinct MI300X' or 'cpu: <model name>, 2 threads'."""
    if device.startswith("cuda"):
        return f"cuda: {torch.cuda.get_device_name(0)}"
    name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"cpu: {name}, {torch.get_num_threads()} threads"


def describe_environment(device: str, trained_with: str | None) -> str:
    """The device, and the backend that trained the adapter (metrics.json's) when known:
    'cuda: NVIDIA H100 80GB HBM3; trained with unsloth'."""
    described = describe_device(device)
    return f"{described}; trained with {trained_with}" if trained_with else described
