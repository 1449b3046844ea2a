"""A model saved in the object store (`model.name: s3://bucket/prefix/`), for air-gapped
clusters with no model hub: the pod copies the directory into its cache with the same
credentials it uses for the run, then loads it like any local model directory.

The copy is named after the URI and what is stored there (every key with its ETag), so a
model rewritten at the same URI is fetched again, and an unchanged one only once per cache.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from pathlib import Path

from finetune_core.store import open_store
from finetune_trainer.smollm2 import cache_dir
from finetune_trainer.stage import invalid_input

log = logging.getLogger(__name__)


def stored_model_dir(uri: str) -> Path:
    """A local copy of the model directory at `uri` (s3://bucket/prefix)."""
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    prefix = prefix.strip("/")
    store = open_store(f"s3://{bucket}")
    keys = sorted(store.list(prefix + "/"))
    if f"{prefix}/config.json" not in keys:
        raise invalid_input("ModelNotFound", f"model.name: {uri} holds no model (no config.json)")
    fingerprint = hashlib.sha256(uri.encode())
    for key in keys:
        fingerprint.update(f"\n{key} {store.etag(key)}".encode())
    target = cache_dir() / "stored-models" / fingerprint.hexdigest()[:32]
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("copying the model at %s (%d files) into %s", uri, len(keys), target)
    partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=target.parent))
    try:
        store.download_dir(prefix, partial)
        partial.rename(target)  # whole or not at all: another process may read it too
    except OSError:
        if not (target / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target
