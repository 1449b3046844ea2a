"""`finetune rollback`: point an alias back at one of its earlier versions, in any store (a
laptop's directory or a cluster's bucket: the operator reads the alias from the store, so
the same command serves both)."""

from __future__ import annotations

from rich.console import Console

from finetune_cli.local.manifest import LOCAL_NAMESPACE
from finetune_core.exit_codes import EXIT_FAILED, EXIT_OK
from finetune_core.layout import AliasPaths
from finetune_core.promotion import PromotionError, rollback
from finetune_core.store import open_store


def rollback_alias(name: str, version: str | None, store: str | None, endpoint: str | None) -> int:
    """`finetune rollback [NAMESPACE/]ALIAS [VERSION]`."""
    console = Console()
    namespace, _, alias_name = name.rpartition("/")
    alias = AliasPaths(namespace or LOCAL_NAMESPACE, alias_name)
    artifacts = open_store(store, endpoint)
    try:
        current = rollback(artifacts, alias, version)
    except PromotionError as error:
        console.print(f"[red]{error}[/]", highlight=False)
        return EXIT_FAILED
    displaced = current.previous[0].get("version")
    console.print(
        f"{alias.namespace}/{alias.alias} now points at {current.version} ({current.uri}); "
        f"{displaced} is kept in its history",
        highlight=False,
    )
    return EXIT_OK
