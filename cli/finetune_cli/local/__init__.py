"""The lifecycle executed on this machine: a stage is a child process, the status lives in
the run's status.json, an Event is a console line (finetune_core.lifecycle decides)."""
