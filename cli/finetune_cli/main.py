"""The `finetune` command. Each subcommand imports its implementation lazily, so that
`finetune validate` never loads torch and `finetune train` never loads kopf."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from finetune_core.layout import ROUND_ENV

app = typer.Typer(
    name="finetune",
    help="Fine-tune, benchmark and gate LLMs: locally or as a Kubernetes operator.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

StoreOption = Annotated[
    str | None,
    typer.Option("--store", help="Artifact store: a directory or s3://BUCKET[/PREFIX]."),
]
EndpointOption = Annotated[
    str | None,
    typer.Option("--s3-endpoint", help="S3/MinIO endpoint, http(s)://host:port."),
]
RunOption = Annotated[str, typer.Option("--run", help="Run directory URI in the store.")]


@app.command()
def validate(
    files: Annotated[list[Path], typer.Argument(help="FineTuneJob manifests.")],
    explain: Annotated[
        bool, typer.Option("--explain", help="Also print each job's GPU memory estimate.")
    ] = False,
) -> None:
    """Check manifests; one line per problem, naming the field path."""
    from finetune_core.manifest import explain_file, validate_file

    problems = [line for path in files for line in validate_file(path)]
    for line in problems:
        typer.echo(line)
    if problems:
        raise typer.Exit(1)
    if explain:
        for path in files:
            for line in explain_file(path):
                typer.echo(line)
    typer.echo(f"{len(files)} manifest(s) valid")


@app.command()
def crd(
    kind: Annotated[
        str | None,
        typer.Option("--kind", help="Only this kind's CRD: FineTuneJob or FineTuneTournament."),
    ] = None,
) -> None:
    """Print the CustomResourceDefinitions (YAML): FineTuneJob and FineTuneTournament."""
    from finetune_operator.crd import CRD_FILES, all_crds_yaml

    if kind is None:
        sys.stdout.write(all_crds_yaml())
        return
    if kind not in CRD_FILES:
        typer.echo(f"--kind: {kind!r} is not one of {', '.join(CRD_FILES)}", err=True)
        raise typer.Exit(1)
    sys.stdout.write(CRD_FILES[kind][1]())


@app.command()
def operator() -> None:
    """Run the operator (configured by FINETUNE_* environment variables)."""
    from finetune_operator.main import run_operator

    raise typer.Exit(run_operator())


@app.command()
def train(run: RunOption) -> None:
    """Train the LoRA adapter of a run (the training pod's entrypoint)."""
    from finetune_trainer.train import main as train_main

    raise typer.Exit(train_main(run))


@app.command()
def benchmark(
    run: RunOption,
    round: Annotated[
        int,
        typer.Option(
            "--round",
            min=1,
            envvar=ROUND_ENV,
            help="Benchmark round (2, 3, ... re-benchmark the same adapter); its report is "
            "kept under report/rounds/<round>/.",
        ),
    ] = 1,
) -> None:
    """Measure a run's adapter against its latency SLA (the benchmark pod's entrypoint)."""
    from finetune_trainer.benchmark import main as benchmark_main

    raise typer.Exit(benchmark_main(run, round))


@app.command("run")
def run_local(
    manifest: Annotated[Path, typer.Argument(help="A FineTuneJob or FineTuneTournament manifest.")],
    store: StoreOption = None,
    s3_endpoint: EndpointOption = None,
    rebenchmark: Annotated[
        bool,
        typer.Option(
            "--rebenchmark",
            help="Measure the manifest's latest generation again (Rejected or "
            "AwaitingApproval) without retraining, and gate it again.",
        ),
    ] = False,
    parallel: Annotated[
        int,
        typer.Option("--parallel", min=1, max=16, help="Tournament candidates run at once."),
    ] = 1,
) -> None:
    """Run the whole pipeline locally: exit 0 promoted, 2 rejected (a tournament: no
    candidate met the SLA), 1 failed."""
    from finetune_cli.local.tournament import is_tournament, run_tournament

    if is_tournament(manifest):
        if rebenchmark:
            raise typer.BadParameter(
                "--rebenchmark applies to a FineTuneJob; re-benchmark a tournament's "
                "candidate through its own FineTuneJob",
                param_hint="--rebenchmark",
            )
        raise typer.Exit(
            run_tournament(manifest, store=store, endpoint=s3_endpoint, parallel=parallel)
        )
    from finetune_cli.local.executor import rebenchmark_run, run_manifest

    if rebenchmark:
        raise typer.Exit(rebenchmark_run(manifest, store=store, endpoint=s3_endpoint))
    raise typer.Exit(run_manifest(manifest, store=store, endpoint=s3_endpoint))


@app.command()
def runs(store: StoreOption = None, s3_endpoint: EndpointOption = None) -> None:
    """List the runs in a store."""
    from finetune_cli.local.view import list_runs

    raise typer.Exit(list_runs(store=store, endpoint=s3_endpoint))


@app.command()
def show(
    name: Annotated[str, typer.Argument(help="FineTuneJob name (optionally namespace/name).")],
    store: StoreOption = None,
    s3_endpoint: EndpointOption = None,
) -> None:
    """Show one run's status and where its report is."""
    from finetune_cli.local.view import show_run

    raise typer.Exit(show_run(name, store=store, endpoint=s3_endpoint))


@app.command()
def approve(
    name: Annotated[
        str, typer.Argument(help="FineTuneJob or FineTuneTournament name (optionally ns/name).")
    ],
    store: StoreOption = None,
    s3_endpoint: EndpointOption = None,
) -> None:
    """Promote a local run (or a tournament's winner) that waits for approval."""
    from finetune_cli.local.tournament import approve_tournament

    approved = approve_tournament(name, store=store, endpoint=s3_endpoint)
    if approved is not None:
        raise typer.Exit(approved)
    from finetune_cli.local.executor import approve_run

    raise typer.Exit(approve_run(name, store=store, endpoint=s3_endpoint))


@app.command("rollback")
def rollback_command(
    alias: Annotated[str, typer.Argument(help="The alias, optionally namespace/alias.")],
    version: Annotated[
        str | None, typer.Argument(help="An earlier version (default: the one before).")
    ] = None,
    store: StoreOption = None,
    s3_endpoint: EndpointOption = None,
) -> None:
    """Point an alias back at one of its earlier versions (recorded in its history)."""
    from finetune_cli.aliases import rollback_alias

    raise typer.Exit(rollback_alias(alias, version, store=store, endpoint=s3_endpoint))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
