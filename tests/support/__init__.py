"""What every test tier shares: FineTuneJob manifests and the `finetune` command."""
