"""A dataset found a moment ago is not looked up again; one found missing always is."""

from __future__ import annotations

from finetune_operator.known_datasets import KnownDatasets


def test_a_found_dataset_is_believed_for_a_while_and_a_missing_one_never() -> None:
    now = [100.0]
    datasets = KnownDatasets(seconds=10.0, clock=lambda: now[0])
    uri = "s3://data/chat.jsonl"
    assert not datasets.known(uri)  # never looked up
    datasets.found(uri)
    now[0] += 9.9
    assert datasets.known(uri)
    now[0] += 0.2
    assert not datasets.known(uri)  # too long ago: looked up again
    datasets.found("s3://data/other.jsonl")  # forgets the stale answer meanwhile
    assert not datasets.known(uri)
    assert datasets.known("s3://data/other.jsonl")
