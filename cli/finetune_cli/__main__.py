"""`python -m finetune_cli`: the same as the `finetune` command."""

from finetune_cli.main import main

main()
