"""Retention: which run directories of a job's superseded generations the store drops.

Every generation writes runs/<namespace>/<name>/g<N>/ (checkpoints, adapter, reports). When
a run settles, the executor keeps the newest `keep` superseded generations and deletes the
older ones; the current generation and every promoted one (named in the job's status
history or in its alias's current.json, including the versions a rollback could return to)
are never deleted. `to_prune` decides; `prune_runs` reads the store and deletes. When to
prune, and what the status says is promoted, the lifecycle decides (`lifecycle.Prune`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

from finetune_core.layout import AliasPaths, RunPaths
from finetune_core.lifecycle import Prune
from finetune_core.promotion import PromotionError, read_champion
from finetune_core.runs import find_runs
from finetune_core.store import ArtifactStore

log = logging.getLogger(__name__)


def to_prune(
    generations: Iterable[int], current: int, protected: Iterable[int], keep: int
) -> list[int]:
    """The generations whose run directories go, oldest first."""
    kept = set(protected) | {current}
    superseded = sorted((g for g in set(generations) if g not in kept), reverse=True)
    return sorted(superseded[max(0, keep) :])


def promoted_generations(store: ArtifactStore, alias: AliasPaths, name: str) -> set[int]:
    """Generations of job `name` that the alias holds now or held before (rollback targets)."""
    current = read_champion(store, alias)
    if current is None:
        return set()
    versions = [current.version] + [str(p.get("version", "")) for p in current.previous]
    pattern = re.compile(re.escape(name) + r"-g(\d+)")
    return {int(m[1]) for v in versions if (m := pattern.fullmatch(v))}


def prune_runs(store: ArtifactStore, run: RunPaths, alias: AliasPaths, prune: Prune) -> list[int]:
    """Delete the run directories `prune` lets go; returns their generations. An unreadable
    alias deletes nothing (a promoted generation could not be told apart)."""
    try:
        protected = prune.protected | promoted_generations(store, alias, run.name)
    except PromotionError as error:
        log.warning("the alias is unreadable; deleting no run directory: %s", error)
        return []
    existing = [r.generation for r in find_runs(store, run.namespace, run.name)]
    doomed = to_prune(existing, run.generation, protected, prune.keep)
    for generation in doomed:
        prefix = RunPaths(run.namespace, run.name, generation).prefix
        store.delete_prefix(prefix + "/")
        log.info("retention: deleted %s", store.uri(prefix))
    return doomed
