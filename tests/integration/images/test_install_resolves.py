"""Each trainer image's own `pip install` lines, read from its Dockerfile and resolved
against PyPI with `pip install --dry-run --report`, in an environment that holds what the
image's default base holds: its torch family as installed distributions, pinned by the
constraints file the Dockerfile's own `grep` would write. No image is built (there is no
container engine here); what this cannot show is listed in docs/install.md, "What is
checked without building".

Needs the network to PyPI (CI has it). The three resolutions run side by side: under two
minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.integration.deploy.dockerfiles import (
    TRAINERS,
    commands,
    load_check_stack,
    parse,
    pip_commands,
    substitute,
)
from tests.integration.deploy.k8s import REPO

pytestmark = [pytest.mark.network, pytest.mark.timeout(600)]

RESOLVE_TIMEOUT = 300
WHEEL_IN_IMAGE = re.compile(r"\$\(ls /tmp/wheels/finetune_operator-\*\.whl\)")
CONSTRAINTS_IN_IMAGE = "/tmp/torch-constraints.txt"
TORCH_DEPENDENCIES = [
    "filelock",
    "typing-extensions>=4.10.0",
    "sympy>=1.13.3",
    "networkx>=2.5.1",
    "jinja2",
    "fsspec>=0.8.5",
]


@dataclass(frozen=True)
class Distribution:
    name: str
    version: str
    requires: tuple[str, ...] = ()


@dataclass(frozen=True)
class Base:
    """What a base image holds of the torch family, and how its tag names the torch."""

    tag_names: str
    distributions: tuple[Distribution, ...] = field(default_factory=tuple)

    def torch_requires(self) -> list[str]:
        return next(list(d.requires) for d in self.distributions if d.name == "torch")


def torch_family(
    torch: str, vision: str, triton_name: str, triton: str
) -> tuple[Distribution, ...]:
    pin = f'{triton_name}=={triton}; platform_system == "Linux"'
    return (
        Distribution("torch", torch, (*TORCH_DEPENDENCIES, pin)),
        Distribution("torchvision", vision, (f"torch=={torch.split('+')[0]}", "numpy", "pillow")),
        Distribution(triton_name, triton),
    )


# ROCm 7.2 + torch 2.10: AMD's wheels for the pair unsloth pins (rocm72-torch2100), their
# triton under the name `triton` with a +rocm version, as the rocm/pytorch images carry it.
ROCM_BASE = Base(
    "pytorch_release_2.10.0",
    torch_family(
        "2.10.0+rocm7.2.0.lw.gitb6ee5fde",
        "0.25.0+rocm7.2.0.git82df5f59",
        "triton",
        "3.6.0+rocm7.2.0.gitba5c1517",
    ),
)
# The same pair from pytorch.org's ROCm index, whose triton is `pytorch-triton-rocm`:
# unsloth's plain `triton` requirement then adds PyPI's triton beside it.
ROCM_PYTORCH_ORG_BASE = Base(
    "pytorch_release_2.10.0",
    torch_family("2.10.0+rocm7.2", "0.25.0+rocm7.2", "pytorch-triton-rocm", "3.6.0"),
)
# pytorch/pytorch:2.8.0-cuda12.8-*: torch 2.8.0+cu128 with PyPI's triton 3.4.0.
CUDA_BASE = Base("2.8.0-cuda12.8", torch_family("2.8.0+cu128", "0.23.0+cu128", "triton", "3.4.0"))


def clean_env() -> dict[str, str]:
    """The subprocesses see nothing of this process's import path (a source tree on
    PYTHONPATH would look installed to pip)."""
    return {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME"}}


@dataclass
class Resolution:
    base: dict[str, str]
    installed: dict[str, str]  # what the image's pip installs would add or replace
    removed: set[str]  # what its pip uninstalls take out
    after: dict[str, str]  # the environment once the RUN is done


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def fake_base(python_dir: Path, base: Base) -> Path:
    """A venv whose site-packages holds the base's distributions as metadata only."""
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(python_dir)],
        check=True,
        env=clean_env(),
    )
    python = python_dir / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
        env=clean_env(),
    ).stdout.strip()
    for dist in base.distributions:
        info = Path(purelib) / f"{dist.name.replace('-', '_')}-{dist.version}.dist-info"
        info.mkdir(parents=True)
        lines = ["Metadata-Version: 2.1", f"Name: {dist.name}", f"Version: {dist.version}"]
        lines += [f"Requires-Dist: {requirement}" for requirement in dist.requires]
        (info / "METADATA").write_text("\n".join(lines) + "\n")
        (info / "INSTALLER").write_text("pip\n")
        (info / "RECORD").write_text("")
    return python


def constraints_from_grep(variant: str, base: Base) -> str:
    """What `pip list --format=freeze | grep -iE PATTERN` writes in the image."""
    (grep,) = [argv for argv in commands(parse(TRAINERS[variant]).final) if argv[0] == "grep"]
    pattern = re.compile(grep[-1], re.IGNORECASE)
    lines = [f"{d.name}=={d.version}" for d in base.distributions]
    return "".join(f"{line}\n" for line in lines if pattern.match(line))


def resolve(variant: str, base: Base, wheel: Path, workdir: Path) -> Resolution:
    workdir.mkdir(parents=True, exist_ok=True)
    final = parse(TRAINERS[variant]).final
    args = final.args()
    python = fake_base(workdir / "base", base)
    constraints = workdir / "torch-constraints.txt"
    constraints.write_text(constraints_from_grep(variant, base))
    installed: dict[str, str] = {}
    for number, argv in enumerate(pip_commands(final, "install")):
        words = [
            WHEEL_IN_IMAGE.sub(str(wheel), substitute(word, args)).replace(
                CONSTRAINTS_IN_IMAGE, str(constraints)
            )
            for word in argv[1:]
            if word != "--no-cache-dir"
        ]
        report = workdir / f"report-{number}.json"
        command = [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "--disable-pip-version-check",
            "install",
            "--dry-run",
            "--quiet",
            "--report",
            str(report),
            *words,
        ]
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=RESOLVE_TIMEOUT,
            check=False,
            cwd=workdir,
            env=clean_env(),
        )
        assert done.returncode == 0, f"{variant}: {' '.join(argv)} does not resolve:\n{done.stderr}"
        for item in json.loads(report.read_text())["install"]:
            installed[canonical(item["metadata"]["name"])] = item["metadata"]["version"]
    removed = {
        canonical(word)
        for argv in pip_commands(final, "uninstall")
        for word in argv[1:]
        if not word.startswith("-")
    }
    base_versions = {canonical(d.name): d.version for d in base.distributions}
    after = {
        name: version
        for name, version in (base_versions | installed).items()
        if name not in removed
    }
    return Resolution(base_versions, installed, removed, after)


def build_wheel(out: Path) -> Path:
    """The project's wheel, built as the images' wheel stage builds it: from a copy of
    what that stage copies (so the source tree gets no build/ or egg-info)."""
    stage = parse(TRAINERS["rocm"]).stages[0]
    assert stage.name == "wheel"
    source = out / "src"
    for value in stage.values("COPY"):
        *paths, destination = value.split()
        for path in paths:
            target = source / destination if destination not in {".", "./"} else source
            if (REPO / path).is_dir():
                shutil.copytree(REPO / path, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / path, target / Path(path).name)
    wheels = out / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(wheels), "."],
        check=True,
        timeout=RESOLVE_TIMEOUT,
        cwd=source,
        env=clean_env(),
    )
    (built,) = wheels.glob("finetune_operator-*.whl")
    return built


CASES = {
    "rocm": ("rocm", ROCM_BASE),
    "cuda": ("cuda", CUDA_BASE),
    "rocm-pytorch-org": ("rocm", ROCM_PYTORCH_ORG_BASE),
}


@pytest.fixture(scope="module")
def resolutions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Resolution]:
    """Every case resolved once, side by side (the time goes to the network)."""
    root = tmp_path_factory.mktemp("images")
    wheel = build_wheel(root)
    with ThreadPoolExecutor(max_workers=len(CASES)) as pool:
        futures = {
            case: pool.submit(resolve, variant, base, wheel, root / case)
            for case, (variant, base) in CASES.items()
        }
        return {case: future.result() for case, future in futures.items()}


@pytest.fixture(scope="module")
def check() -> Any:
    return load_check_stack()


@pytest.mark.parametrize("variant", ["rocm", "cuda"])
def test_trainer_install_resolves_and_keeps_the_base_torch(
    variant: str, resolutions: dict[str, Resolution], check: Any
) -> None:
    _, base = CASES[variant]
    default = parse(TRAINERS[variant]).global_args["BASE_IMAGE"]
    assert base.tag_names in default, f"the stand-in base no longer matches {default}"

    resolution = resolutions[variant]
    replaced = {
        name: resolution.installed[name] for name in resolution.base if name in resolution.installed
    }
    assert replaced == {}, f"{variant}: the install would replace the base's {replaced}"
    tritons = {n for n in resolution.installed if n in check.TRITON_DISTRIBUTIONS}
    assert tritons == set(), f"{variant}: the install would add {tritons} beside the base's"
    assert check.triton_problems(resolution.after, variant, base.torch_requires()) == []
    assert check.package_problems(resolution.after, variant) == []
    assert (
        resolution.installed["unsloth"] == parse(TRAINERS[variant]).final.args()["UNSLOTH_VERSION"]
    )
    if variant == "rocm":
        # unsloth[amd] still pulls xformers; the image's uninstall is what keeps it out.
        assert "xformers" in resolution.installed and "xformers" in resolution.removed


def test_a_base_with_pytorch_triton_rocm_would_get_a_second_triton(
    resolutions: dict[str, Resolution], check: Any
) -> None:
    """Why the ROCm image wants a base whose ROCm triton is named `triton`: with
    pytorch.org's pytorch-triton-rocm, the same install adds PyPI's triton, and the
    build-time check names both."""
    resolution = resolutions["rocm-pytorch-org"]
    assert "triton" in resolution.installed
    problems = check.triton_problems(
        resolution.after, "rocm", ROCM_PYTORCH_ORG_BASE.torch_requires()
    )
    assert any("2 triton distributions" in problem for problem in problems), problems
