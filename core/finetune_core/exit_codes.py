"""Every exit code the `finetune` command returns, in one place.

Pod entrypoints (`finetune train`, `finetune benchmark`): 0 is success and any other code a
failure the Job may retry (training resumes from its last checkpoint). EXIT_INVALID_INPUT
says that retrying cannot help: the Job's podFailurePolicy fails the Job at once on it.

`finetune run`: 0 promoted (or awaiting approval, or passed), 2 rejected by the gate,
1 failed; 128 + N when stopped by signal N (130 for Ctrl-C).
"""

import signal

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_REJECTED = 2
"""`finetune run`: the gate rejected the model."""
EXIT_INVALID_INPUT = 3
"""The run's input is unusable: bad dataset, unknown target modules, unreadable config.json."""
EXIT_TERMINATED = 128 + signal.SIGTERM
"""Stopped by SIGTERM (143), as a shell reports it; the trainer saved a checkpoint first."""


def exit_for_signal(signum: int) -> int:
    """128 + the signal, as a shell reports a process it stopped: 130 for Ctrl-C."""
    return 128 + signum


PHASE_EXIT: dict[str, int] = {
    "Promoted": EXIT_OK,
    "AwaitingApproval": EXIT_OK,
    "Passed": EXIT_OK,
    "Rejected": EXIT_REJECTED,
    "Failed": EXIT_FAILED,
}
"""`finetune run`'s exit code for the phase a run settled in."""
