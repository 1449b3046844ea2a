"""Property: any YAML document is either a valid FineTuneJob or an InvalidManifest whose
problems are one line each and name a path; never another exception.

Documents are arbitrary JSON-like values, and the example manifests with one part replaced,
removed or added. `finetune validate` on such files exits 0 or 1 with one line per problem.
"""

from __future__ import annotations

import contextlib
import copy
import re
import sys
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from finetune_cli.main import app
from finetune_core.api import MAX_NAME_LENGTH
from finetune_core.manifest import (
    FineTuneJob,
    InvalidManifest,
    load_documents,
    parse_manifest,
    validate_file,
)
from tests.unit.operator.crd_check import crd_problems

DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")

EXAMPLES = Path(__file__).resolve().parents[3] / "manifests" / "examples"
EXAMPLE_DOCUMENTS = [
    yaml.safe_load(path.read_text(encoding="utf-8")) for path in sorted(EXAMPLES.glob("*.yaml"))
]
# The CEL interpreter raises the recursion limit when first used; do that before hypothesis
# runs, which warns when the limit changes under it.
crd_problems(EXAMPLE_DOCUMENTS[0])
# Where a problem can be: the document's top-level fields, or the document as a whole.
PATH_ROOTS = ("apiVersion", "kind", "metadata", "spec", "(document)")

# Strings near the edges of the rules: quantities, URIs, labels, names, control characters.
EDGE_STRINGS = st.sampled_from(
    [
        "",
        " ",
        "\n",
        "a\nb",
        "\x85",
        "\u2028",
        "64Gi",
        "64GB",
        "500m",
        "1e3",
        "s3://datasets/v3.jsonl",
        "s3://datasets",
        "s3://Datasets/x",
        "s3://d/x",
        "gs://bucket/x",
        "a\n://x",
        "file:///tmp/x.jsonl",
        "kubernetes.io/hostname",
        "a/b/c",
        "Exists",
        "Equal",
        "NoSchedule",
        "phi-4",
        "smollm2-135m",
        "demo",
        "demo\n",
        "a" * 70,
        "model-x",
        "name",
        "namespace",
        "generation",
        "annotations",
        "function-after[x]",
        "[key]",
        "0" * 64,
        "1" * 5000,
    ]
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=12)
    | EDGE_STRINGS
)
KEYS = st.text(max_size=10) | EDGE_STRINGS | st.integers(-3, 3) | st.booleans() | st.none()
VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=4),
    max_leaves=12,
)


def _places(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside a document (mapping keys and list indexes)."""
    found = [path]
    if isinstance(node, dict):
        for key, child in node.items():
            found += _places(child, (*path, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            found += _places(child, (*path, index))
    return found


@st.composite
def mutated_examples(draw: st.DrawFn) -> Any:
    """An example manifest with one value replaced, one key removed or one key added."""
    document = copy.deepcopy(draw(st.sampled_from(EXAMPLE_DOCUMENTS)))
    path = draw(st.sampled_from(_places(document)))
    if not path:
        return draw(VALUES)
    parent = document
    for part in path[:-1]:
        parent = parent[part]
    action = draw(st.sampled_from(["replace", "remove", "add"]))
    if action == "replace":
        parent[path[-1]] = draw(VALUES)
    elif action == "remove":
        del parent[path[-1]]
    elif isinstance(parent[path[-1]], dict):
        parent[path[-1]][draw(KEYS)] = draw(VALUES)
    else:
        parent[path[-1]] = draw(VALUES)
    return document


@st.composite
def changed_metadata(draw: st.DrawFn) -> Any:
    """An example manifest whose metadata (which names the run) holds any value."""
    document = copy.deepcopy(draw(st.sampled_from(EXAMPLE_DOCUMENTS)))
    field = draw(st.sampled_from(["name", "namespace", "generation", "annotations", "labels"]))
    # Near a valid name: separators, case, whitespace and line ends around one.
    affix = st.text(alphabet="-._/ A0\n\t\r", max_size=2)
    near = st.builds("{}{}{}".format, affix, st.sampled_from(["demo", "ml"]), affix)
    document["metadata"][field] = draw(VALUES | near)
    return document


DOCUMENTS = VALUES | mutated_examples() | changed_metadata()


def without_null_fields(node: Any) -> Any:
    """The object as the API server validates it: a field set to null is pruned first."""
    if isinstance(node, dict):
        return {key: without_null_fields(value) for key, value in node.items() if value is not None}
    if isinstance(node, list):
        return [without_null_fields(item) for item in node]
    return node


def check_outcome(document: Any) -> None:
    try:
        job = parse_manifest(document)
    except InvalidManifest as invalid:
        assert invalid.problems, "InvalidManifest without a problem"
        for problem in invalid.problems:
            line = str(problem)
            assert len(line.splitlines()) == 1, f"not one line: {line!r}"
            assert problem.path.startswith(PATH_ROOTS), line
            assert problem.message, line
    else:
        # What we accept, the API server accepts: the CRD's schema and rules, and a name
        # and namespace it would take.
        assert isinstance(job, FineTuneJob)
        assert crd_problems(without_null_fields(document)) == []
        assert DNS_LABEL.fullmatch(job.name) and len(job.name) <= MAX_NAME_LENGTH
        assert job.namespace is None or DNS_LABEL.fullmatch(job.namespace)


@settings(max_examples=200, deadline=None)
@given(DOCUMENTS)
def test_any_document_is_valid_or_invalid_with_one_line_per_problem(document: Any) -> None:
    check_outcome(document)


@settings(max_examples=100, deadline=None)
@given(mutated_examples())
def test_a_changed_example_is_valid_or_names_what_is_wrong(document: Any) -> None:
    check_outcome(document)


@settings(max_examples=300, deadline=None)
@given(changed_metadata())
def test_changed_metadata_is_valid_only_where_a_cluster_takes_it(document: Any) -> None:
    check_outcome(document)


def dump(document: Any) -> str | None:
    """The document as YAML, or None where YAML cannot write it (keys it cannot represent)."""
    try:
        return yaml.safe_dump(document, allow_unicode=True)
    except yaml.YAMLError:
        return None


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(DOCUMENTS)
def test_a_file_is_valid_or_has_one_line_per_problem(tmp_path: Path, document: Any) -> None:
    text = dump(document)
    if text is None:
        return
    path = tmp_path / "job.yaml"
    path.write_text(text, encoding="utf-8")
    for line in validate_file(path):
        assert line.startswith(f"{path}: "), line
        assert len(line.splitlines()) == 1, f"not one line: {line!r}"


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_bytes_are_read_or_refused_as_yaml(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "job.yaml"
    path.write_bytes(content)
    with contextlib.suppress(yaml.YAMLError):  # any other exception fails the test
        load_documents(path)
    for line in validate_file(path):
        assert line.startswith(f"{path}: "), line
        assert len(line.splitlines()) == 1, f"not one line: {line!r}"


def _stack_depth() -> int:
    frame, depth = sys._getframe(), 0
    while frame is not None:
        frame, depth = frame.f_back, depth + 1  # type: ignore[assignment]
    return depth


def test_deeply_nested_yaml_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("spec: " + "[" * 400 + "]" * 400 + "\n", encoding="utf-8")
    # PyYAML takes time quadratic in the depth: overflow a small stack instead of a big one.
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(_stack_depth() + 150)
    try:
        lines = validate_file(path)
    finally:
        sys.setrecursionlimit(limit)
    assert lines == [f"{path}: the document is nested too deeply to read"]


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(DOCUMENTS, min_size=1, max_size=3))
def test_finetune_validate_exits_1_with_one_line_per_problem(
    tmp_path: Path, documents: list[Any]
) -> None:
    texts = [text for text in map(dump, documents) if text is not None]
    if not texts:
        return
    paths = []
    for index, text in enumerate(texts):
        paths.append(tmp_path / f"job{index}.yaml")
        paths[-1].write_text(text, encoding="utf-8")
    result = CliRunner().invoke(app, ["validate", *map(str, paths)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert result.exit_code in (0, 1)
    lines = result.output.splitlines()
    if result.exit_code == 0:
        assert lines == [f"{len(paths)} manifest(s) valid"]
    else:
        assert lines and all(line.startswith(tuple(f"{p}: " for p in paths)) for line in lines)
        assert "Traceback" not in result.output
