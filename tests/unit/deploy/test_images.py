"""The Dockerfiles, parsed (no Docker engine here): pinned bases, a numeric non-root
user, no credentials, the `finetune` entrypoint and the right extras per image."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

from tests.unit.deploy.k8s import REPO

IMAGES = REPO / "images"
OPERATOR = IMAGES / "operator" / "Dockerfile"
TRAINER_ROCM = IMAGES / "trainer" / "Dockerfile.rocm"
TRAINER_CUDA = IMAGES / "trainer" / "Dockerfile.cuda"
ALL = [OPERATOR, TRAINER_ROCM, TRAINER_CUDA]
CREDENTIAL_WORDS = ("KEY", "SECRET", "TOKEN", "PASSWORD", "PASSWD", "CREDENTIAL")


@dataclass
class Stage:
    """One FROM ... section: its base (ARG defaults substituted) and instructions."""

    base: str
    base_expression: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def values(self, instruction: str) -> list[str]:
        return [value for kind, value in self.instructions if kind == instruction]


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]


def parse(path: Path) -> Dockerfile:
    with path.open("rb") as handle:
        parser = DockerfileParser(fileobj=handle)
        structure = parser.structure
        resolved_bases = parser.parent_images
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for item in structure:
        kind, value = item["instruction"], item["value"]
        if kind == "COMMENT":
            continue
        if kind == "FROM":
            expression, _, name = value.partition(" AS ")
            stages.append(Stage(resolved_bases[len(stages)], expression.strip(), name or None))
        elif not stages and kind == "ARG":
            key, _, default = value.partition("=")
            global_args[key.strip()] = default.strip()
        else:
            stages[-1].instructions.append((kind, value))
    return Dockerfile(global_args, stages)


def run_text(stage: Stage) -> str:
    return "\n".join(stage.values("RUN"))


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
    assert "torch.version.hip" in installs, "the build must fail on a non-ROCm torch"


def test_cuda_trainer_installs_unsloth_and_the_trainer_extra() -> None:
    dockerfile = parse(TRAINER_CUDA)
    assert dockerfile.final.base_expression == "${BASE_IMAGE}"
    assert "cuda" in dockerfile.global_args["BASE_IMAGE"]
    installs = run_text(dockerfile.final)
    assert '"unsloth==' in installs
    assert re.search(r"finetune_operator-\*\.whl\)?\[trainer,gpu\]", installs)
    assert "torch.version.cuda" in installs


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
