"""Exit codes of the pod entrypoints (`finetune train`, `finetune benchmark`).

0 is success and any other code a failure the Job may retry (training resumes from its last
checkpoint). EXIT_INVALID_INPUT says that retrying cannot help: the Job's podFailurePolicy
fails the Job at once on it.
"""

EXIT_INVALID_INPUT = 3
"""The run's input is unusable: bad dataset, unknown target modules, unreadable config.json."""
