"""The syntax checks for values Kubernetes and S3 refuse, and the schema patterns beside them."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest

from finetune_core.syntax import (
    LABEL_VALUE_PATTERN,
    QUANTITY_PATTERN,
    bucket_problem,
    dns_label_problem,
    label_key_problem,
    label_value_problem,
    parse_quantity,
    quantity_problem,
    s3_object_problem,
)


def schema_accepts(pattern: str, text: str) -> bool:
    """`^...$` as the API server (RE2) and JSON Schema (ECMA-262) read it: the whole string;
    Python's `$` would also match before a final newline."""
    assert pattern.startswith("^") and pattern.endswith("$")
    return re.fullmatch(pattern[1:-1], text) is not None


QUANTITIES = {
    "8": Decimal(8),
    "500m": Decimal("0.5"),
    "1.5": Decimal("1.5"),
    ".5": Decimal("0.5"),
    "1.": Decimal(1),
    "+2": Decimal(2),
    "64Gi": Decimal(64 * 2**30),
    "1Ki": Decimal(1024),
    "2Ei": Decimal(2 * 2**60),
    "64G": Decimal(64 * 10**9),
    "3k": Decimal(3000),
    "1E": Decimal(10**18),
    "1e3": Decimal(1000),
    "1E+3": Decimal(1000),
    "25e-1": Decimal("2.5"),
    "100n": Decimal("1E-7"),
    "7u": Decimal("0.000007"),
}
NOT_QUANTITIES = [
    "",
    "eight",
    "64GB",
    "64gb",
    "64K",
    "64KB",
    "lots",
    "1 Gi",
    "1Gi ",
    "-1",
    "1.2.3",
    ".",
    "Gi",
    "1e",
    "1e1.5",
    "1Gi\n",
    "1e99999999999",
    "0x10",
]


@pytest.mark.parametrize(("text", "value"), QUANTITIES.items())
def test_quantities_are_parsed_by_the_kubernetes_grammar(text: str, value: Decimal) -> None:
    assert parse_quantity(text) == value
    assert schema_accepts(QUANTITY_PATTERN, text)


@pytest.mark.parametrize("text", NOT_QUANTITIES)
def test_what_is_not_a_quantity_is_refused_by_the_parser_and_the_pattern(text: str) -> None:
    if text != "1e99999999999":  # syntactically fine; only its size is refused
        assert not schema_accepts(QUANTITY_PATTERN, text)
    assert parse_quantity(text) is None
    problem = quantity_problem(text)
    assert problem is not None
    assert problem.startswith(f"{text!r} is not a Kubernetes quantity")


def test_quantity_problems_hint_and_bound() -> None:
    assert quantity_problem("64GB") == (
        "'64GB' is not a Kubernetes quantity (a number with an optional suffix: m, k, M, G, T, "
        "P, E, Ki, Mi, Gi, Ti, Pi, Ei; e.g. 8, 500m, 64Gi) (did you mean G or Gi?)"
    )
    assert quantity_problem("eight", whole=True) is not None
    assert quantity_problem("0") == "'0' must be greater than 0"
    assert quantity_problem("0.0Gi") == "'0.0Gi' must be greater than 0"
    assert quantity_problem("9Ei") is not None  # 9 * 2**60 > 2**63 - 1
    assert quantity_problem("7Ei") is None
    assert quantity_problem("500m") is None
    assert quantity_problem("500m", whole=True) == (
        "'500m' is 0.5 bytes, not a whole number of bytes (the suffix m means milli; Mi is "
        "mebibytes)"
    )
    assert quantity_problem("1.5Ki", whole=True) is None  # 1536 bytes


@pytest.mark.parametrize(
    "key",
    [
        "gpu",
        "kubernetes.io/hostname",
        "node.example.com/pool",
        "a_b.c-D",
        "A" * 63,
        "x/" + "a" * 63,
    ],
)
def test_valid_label_keys(key: str) -> None:
    assert label_key_problem(key) is None


@pytest.mark.parametrize(
    ("key", "part"),
    [
        ("", "name"),
        ("a b", "name"),
        ("-a", "name"),
        ("a-", "name"),
        ("a" * 64, "name"),
        ("example.com/", "name"),
        ("/a", "prefix before"),
        ("Example.com/a", "prefix must"),
        ("a/b/c", "prefix must"),
        ("a..b/c", "prefix must"),
        ("a" * 254 + "/c", "prefix must"),
    ],
)
def test_invalid_label_keys(key: str, part: str) -> None:
    problem = label_key_problem(key)
    assert problem is not None and problem.startswith(f"{key!r} is not a label key: the {part}")


@pytest.mark.parametrize("value", ["", "mi300x", "a.b_c-d", "Z" * 63])
def test_valid_label_values(value: str) -> None:
    assert label_value_problem(value) is None
    assert schema_accepts(LABEL_VALUE_PATTERN, value)


@pytest.mark.parametrize("value", ["a b", "-a", "a-", "a/b", "ü", "a\n"])
def test_invalid_label_values(value: str) -> None:
    assert label_value_problem(value) == (
        f"{value!r} is not a label value: at most 63 alphanumerics with '-', '_' or '.' between "
        "them"
    )
    assert not schema_accepts(LABEL_VALUE_PATTERN, value)


def test_a_long_label_value_is_refused_by_length() -> None:
    assert label_value_problem("a" * 64) == (
        f"{'a' * 20!r}... must be at most 63 characters (it is 64)"
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("ml", None),
        ("team-a1", None),
        ("a" * 63, None),
        ("", "must not be empty"),
        ("a" * 64, "must be at most 63 characters (it is 64)"),
        ("ML", "'ML' is not a DNS label"),
        ("a_b", "'a_b' is not a DNS label"),
        ("-a", "'-a' is not a DNS label"),
        ("a.b", "'a.b' is not a DNS label"),
        ("..", "'..' is not a DNS label"),
        ("ml\n", "'ml\\n' is not a DNS label"),
    ],
)
def test_dns_labels(text: str, problem: str | None) -> None:
    found = dns_label_problem(text)
    assert found == problem if problem is None else (found or "").startswith(problem)


@pytest.mark.parametrize("bucket", ["abc", "datasets", "my.bucket-1", "a" * 63, "0ab"])
def test_valid_buckets(bucket: str) -> None:
    assert bucket_problem(bucket) is None


@pytest.mark.parametrize(
    ("bucket", "problem"),
    [
        ("ab", "must be 3 to 63 characters"),
        ("a" * 64, "must be 3 to 63 characters"),
        ("Datasets", "may only hold lower-case letters"),
        ("data_sets", "may only hold lower-case letters"),
        ("-data", "must start and end with a letter or digit"),
        ("data.", "must start and end with a letter or digit"),
        ("da..ta", "must not hold '..', '.-' or '-.'"),
        ("da.-ta", "must not hold '..', '.-' or '-.'"),
        ("192.168.1.10", "must not be an IP address"),
        ("xn--data", "reserved prefix"),
        ("data-s3alias", "reserved prefix"),
    ],
)
def test_invalid_buckets(bucket: str, problem: str) -> None:
    assert problem in (bucket_problem(bucket) or "")


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        ("s3://datasets/v3.jsonl", None),
        ("s3://datasets/a/b/v3.jsonl", None),
        ("s3://datasets", "'s3://datasets' names no object"),
        ("s3://datasets/", "'s3://datasets/' names no object"),
        ("s3://datasets/v3/", "names a folder, not an object"),
        ("s3://datasets/a/../v3.jsonl", "must not hold '.' or '..' path segments"),
        ("s3://datasets/" + "k" * 1025, "at most 1024 bytes"),
        ("s3://d/v3.jsonl", "bucket name 'd' must be 3 to 63 characters"),
        ("s3:///v3.jsonl", "bucket name '' must be 3 to 63 characters"),
    ],
)
def test_s3_objects(uri: str, problem: str | None) -> None:
    found = s3_object_problem(uri)
    assert found is None if problem is None else problem in (found or "")
