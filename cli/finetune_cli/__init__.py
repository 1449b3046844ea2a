"""The `finetune` command: validate, crd, operator, the pod entrypoints, and the local
executor of the lifecycle (`finetune run`, `runs`, `show`, `approve`)."""
