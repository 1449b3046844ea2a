"""Status patches: the difference of two statuses, as one JSON merge patch, is exact."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from finetune_core.lifecycle import merge_diff, merge_patch

KEYS = st.sampled_from(["phase", "progress", "metrics", "step", "runs", "a", "b"])
LEAVES = st.one_of(st.integers(-3, 3), st.text(max_size=3), st.booleans())
# JSON values without null (a status as the API server keeps it).
VALUES = st.recursive(
    LEAVES,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(KEYS, inner, max_size=4)),
    max_leaves=12,
)
PATCHES = st.recursive(
    st.one_of(LEAVES, st.none()),
    lambda inner: st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(before=st.dictionaries(KEYS, VALUES, max_size=5), after=st.dictionaries(KEYS, VALUES))
def test_the_diff_patched_onto_the_old_status_gives_the_new(
    before: dict[str, Any], after: dict[str, Any]
) -> None:
    assert merge_patch(before, merge_diff(before, after)) == after


@settings(max_examples=300, deadline=None)
@given(
    status=st.dictionaries(KEYS, VALUES, max_size=5),
    first=st.dictionaries(KEYS, PATCHES, max_size=4),
    second=st.dictionaries(KEYS, PATCHES, max_size=4),
)
def test_two_patches_in_a_row_are_one_diff(
    status: dict[str, Any], first: dict[str, Any], second: dict[str, Any]
) -> None:
    """What a reconcile writes when one pass's status waits for the next pass's."""
    after = merge_patch(merge_patch(status, first), second)
    assert merge_patch(status, merge_diff(status, after)) == after


def test_a_field_removed_inside_a_section_is_patched_with_null() -> None:
    before = {"phase": "Validating", "progress": {"step": 1, "of": 4}}
    after = {"phase": "Pending", "progress": {"of": 4}}
    assert merge_diff(before, after) == {"phase": "Pending", "progress": {"step": None}}
    assert merge_diff(after, after) == {}
