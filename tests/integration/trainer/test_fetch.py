"""A dataset fetched from the S3 server (the real minio client against moto)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune_core.store import S3Store
from finetune_trainer.data import DatasetError, fetch, read_conversations

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}


def test_fetch_from_s3(s3_store: S3Store, tmp_path: Path) -> None:
    s3_store.put_bytes("data/v3.jsonl", json.dumps(GOOD).encode())
    local = fetch(f"s3://{s3_store.bucket}/data/v3.jsonl", tmp_path / "dl")
    assert read_conversations(local) == [GOOD["messages"]]
    with pytest.raises(DatasetError, match="no such object"):
        fetch(f"s3://{s3_store.bucket}/data/missing.jsonl", tmp_path / "dl")
