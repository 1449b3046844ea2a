"""The Dockerfiles, parsed without a Docker engine: stages, their instructions, the shell
commands of their RUNs, and the trainer images' build-time stack check as a module."""

from __future__ import annotations

import importlib.util
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from dockerfile_parse import DockerfileParser

from tests.integration.deploy.k8s import REPO

IMAGES = REPO / "images"
OPERATOR = IMAGES / "operator" / "Dockerfile"
TRAINER_ROCM = IMAGES / "trainer" / "Dockerfile.rocm"
TRAINER_CUDA = IMAGES / "trainer" / "Dockerfile.cuda"
TRAINERS = {"rocm": TRAINER_ROCM, "cuda": TRAINER_CUDA}
ALL = [OPERATOR, TRAINER_ROCM, TRAINER_CUDA]
CHECK_STACK = IMAGES / "trainer" / "check_stack.py"


@dataclass
class Stage:
    """One FROM ... section: its base (ARG defaults substituted) and instructions."""

    base: str
    base_expression: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def values(self, instruction: str) -> list[str]:
        return [value for kind, value in self.instructions if kind == instruction]

    def args(self) -> dict[str, str]:
        """The stage's ARG defaults."""
        return dict(
            (value.partition("=")[0].strip(), value.partition("=")[2].strip())
            for value in self.values("ARG")
        )


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
        final_env = parser.envs
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
    if stages:
        stages[-1].env = dict(final_env)
    return Dockerfile(global_args, stages)


def run_text(stage: Stage) -> str:
    return "\n".join(stage.values("RUN"))


def commands(stage: Stage) -> list[list[str]]:
    """Every simple command of the stage's RUNs, in order, as argv lists (the words of a
    pipeline's parts and of `;`/`&&` lists each form one command; quotes removed, `$(...)`
    and `${...}` left as written)."""
    found: list[list[str]] = []
    for text in stage.values("RUN"):
        lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|>")
        lexer.whitespace_split = True
        current: list[str] = []
        for token in lexer:
            if token and set(token) <= set(";&|>"):
                if current:
                    found.append(current)
                current = []
                if ">" in token:  # the redirection target is not a command
                    current = [">"]
                continue
            if current[:1] == [">"]:
                current = []
                continue
            current.append(token)
        if current:
            found.append(current)
    return found


def pip_commands(stage: Stage, verb: str) -> list[list[str]]:
    """The `pip <verb>` commands of the stage, from `<verb>` on."""
    found = []
    for argv in commands(stage):
        if "pip" in argv and verb in argv and argv.index(verb) == argv.index("pip") + 1:
            found.append(argv[argv.index(verb) :])
    return found


def substitute(word: str, args: dict[str, str]) -> str:
    """`${NAME}` replaced by the ARG's default."""
    return re.sub(r"\$\{(\w+)\}", lambda match: args[match.group(1)], word)


def load_check_stack() -> ModuleType:
    """images/trainer/check_stack.py, imported as the module `check_stack`."""
    if "check_stack" in sys.modules:
        return sys.modules["check_stack"]
    spec = importlib.util.spec_from_file_location("check_stack", CHECK_STACK)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_stack"] = module
    spec.loader.exec_module(module)
    return module
