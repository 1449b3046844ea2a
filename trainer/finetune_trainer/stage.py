"""What both pod stages (train, benchmark) share: config.json in; when a stage cannot
finish, an error.json `{stage, reason, message}` in the run directory and an exit code from
`finetune_core.exit_codes` out.

Code that finds a problem raises StageFailure with a CamelCase reason; the stage's entry
point turns it into the file and the exit code (`report`). EXIT_INVALID_INPUT says that a
retry cannot help (the Job's podFailurePolicy fails the Job at once); EXIT_FAILED lets the
Job retry.
"""

from __future__ import annotations

import logging
from typing import Literal

from finetune_core.api import RunConfig
from finetune_core.exit_codes import EXIT_FAILED, EXIT_INVALID_INPUT
from finetune_core.layout import ErrorReport, RunPaths
from finetune_core.store import ArtifactStore, InvalidFile, read_model

log = logging.getLogger(__name__)

PodStage = Literal["train", "benchmark"]


class StageFailure(Exception):
    """A failure with its error.json reason and the exit code it ends the process with."""

    def __init__(self, reason: str, message: str, exit_code: int = EXIT_FAILED):
        super().__init__(message)
        self.reason = reason
        self.exit_code = exit_code


def invalid_input(reason: str, message: str) -> StageFailure:
    """A failure that retrying cannot fix: the run's input is unusable."""
    return StageFailure(reason, message, EXIT_INVALID_INPUT)


def report(store: ArtifactStore, paths: RunPaths, stage: PodStage, failure: StageFailure) -> int:
    """Log the failure, write error.json (if the store allows) and return its exit code."""
    log.error("%s: %s", failure.reason, failure, extra={"reason": failure.reason})
    error = ErrorReport(stage=stage, reason=failure.reason, message=str(failure))
    try:
        store.put_json(paths.error, error.to_wire())
    except Exception as problem:  # the store may be what failed
        log.error("could not write error.json: %s", problem)
    return failure.exit_code


def unexpected(error: Exception, reason: str) -> StageFailure:
    """Any other exception as a retryable failure whose message names its type."""
    return StageFailure(reason, f"{type(error).__name__}: {error}", EXIT_FAILED)


def read_config(store: ArtifactStore, paths: RunPaths) -> RunConfig:
    """The run's config.json; an InvalidConfig input failure when absent or invalid."""
    try:
        config = read_model(store, paths.config, RunConfig)
    except InvalidFile as error:
        raise invalid_input("InvalidConfig", str(error)) from None
    if config is None:
        raise invalid_input("InvalidConfig", f"{store.uri(paths.config)} does not exist")
    return config
