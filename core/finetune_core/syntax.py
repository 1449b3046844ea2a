"""The syntax of values that Kubernetes and S3 refuse when they are wrong: resource quantities,
label keys and values, DNS labels, S3 bucket names and object keys.

Each check returns None for a valid value, or what is wrong with it (one line, for a person).
The regular expressions are also written into the CRD schema (`pattern`), so they stay within
the dialect that Python, the API server (RE2) and JSON Schema validators all read alike.
"""

from __future__ import annotations

import ipaddress
import re
from decimal import Decimal

# ------------------------------------------------------------------ quantities

# Kubernetes resource.Quantity: <number><suffix>, where the number is digits with an optional
# fraction (`1`, `1.5`, `1.`, `.5`) and the suffix is a binary SI suffix (Ki..Ei), a decimal
# SI suffix (n, u, m, k, M, G, T, P, E, or none) or a decimal exponent (e3, E-2). Resource
# requests cannot be negative, so no `-` sign is accepted here.
_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_SUFFIX = r"(?:[KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]+)?"
QUANTITY_PATTERN = rf"^\+?{_NUMBER}{_SUFFIX}$"
_QUANTITY = re.compile(rf"\+?(?P<number>{_NUMBER})(?P<suffix>{_SUFFIX})")

_BINARY = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
# Quantities are kept in a signed 64-bit integer of their smallest unit; anything larger
# cannot be a resource request.
_MAX_QUANTITY = Decimal(2**63 - 1)
_HINTS = {"KB": "k or Ki", "MB": "M or Mi", "GB": "G or Gi", "TB": "T or Ti", "K": "k or Ki"}
QUANTITY_FORMS = "a number with an optional suffix: m, k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi, Ei"


def parse_quantity(text: str) -> Decimal | None:
    """The value of a non-negative Kubernetes quantity (`64Gi` -> 68719476736), or None."""
    match = _QUANTITY.fullmatch(text)
    if match is None:
        return None
    number, suffix = Decimal(match["number"]), match["suffix"]
    try:
        if suffix in _BINARY:
            return number * 2 ** _BINARY[suffix]
        if suffix in _DECIMAL:
            return number.scaleb(_DECIMAL[suffix])
        # The API server reads the exponent as a 32-bit integer.
        if len(suffix.lstrip("eE+-")) > 10 or abs(exponent := int(suffix[1:])) > 2**31 - 1:
            return None
        return number.scaleb(exponent)
    except ArithmeticError:  # beyond Decimal's range: far beyond any resource
        return None


def quantity_problem(text: str, *, whole: bool = False) -> str | None:
    """What is wrong with a resource quantity (positive; `whole`: a whole number, as bytes
    must be), or None."""
    value = parse_quantity(text)
    if value is None:
        hint = next(
            (
                f" (did you mean {forms}?)"
                for suffix, forms in _HINTS.items()
                if text.endswith(suffix) and parse_quantity(text.removesuffix(suffix)) is not None
            ),
            "",
        )
        return f"{text!r} is not a Kubernetes quantity ({QUANTITY_FORMS}; e.g. 8, 500m, 64Gi){hint}"
    if value <= 0:
        return f"{text!r} must be greater than 0"
    if value > _MAX_QUANTITY:
        return f"{text!r} is too large (at most {_MAX_QUANTITY} of the base unit)"
    if whole and value != value.to_integral_value():
        return (
            f"{text!r} is {value.normalize():f} bytes, not a whole number of bytes "
            "(the suffix m means milli; Mi is mebibytes)"
        )
    return None


# ------------------------------------------------------------------ names and labels

DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_DNS_LABEL = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(
    r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*"
)
# A label value (and the name part of a label key): at most 63 characters, alphanumerics with
# '-', '_' or '.' between them.
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
_LABEL_NAME = re.compile(r"(?:[A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
LABEL_VALUE_MAX = 63
LABEL_KEY_MAX = 253 + 1 + LABEL_VALUE_MAX
_NAME_RULE = "alphanumerics with '-', '_' or '.' between them"


def dns_label_problem(text: str) -> str | None:
    """What is wrong with a DNS label (RFC 1123: a namespace's name), or None."""
    if not text:
        return "must not be empty"
    if len(text) > 63:
        return f"must be at most 63 characters (it is {len(text)})"
    if not _DNS_LABEL.fullmatch(text):
        return (
            f"{text!r} is not a DNS label: lower-case letters, digits and '-', starting and "
            "ending with a letter or digit"
        )
    return None


def label_value_problem(text: str) -> str | None:
    """What is wrong with a label value (empty is allowed), or None."""
    if len(text) > LABEL_VALUE_MAX:
        return f"{text[:20]!r}... must be at most {LABEL_VALUE_MAX} characters (it is {len(text)})"
    if text and not _LABEL_NAME.fullmatch(text):
        return f"{text!r} is not a label value: at most 63 {_NAME_RULE}"
    return None


def label_key_problem(text: str) -> str | None:
    """What is wrong with a label key (`[prefix/]name`, the prefix a DNS subdomain), or None."""
    prefix, slash, name = text.rpartition("/")
    if not name:
        return f"{text!r} is not a label key: the name (after any prefix/) must not be empty"
    if slash and not prefix:
        return f"{text!r} is not a label key: the prefix before '/' must not be empty"
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        return (
            f"{text!r} is not a label key: the prefix must be a DNS subdomain (at most 253 "
            "lower-case letters, digits, '-' and '.')"
        )
    if len(name) > LABEL_VALUE_MAX or not _LABEL_NAME.fullmatch(name):
        return f"{text!r} is not a label key: the name must be at most 63 {_NAME_RULE}"
    return None


# ------------------------------------------------------------------ S3

_BUCKET_CHARACTERS = re.compile(r"[a-z0-9.-]+")
MAX_KEY_BYTES = 1024


def bucket_problem(bucket: str) -> str | None:
    """What is wrong with an S3 bucket name (the rules AWS S3 and MinIO share), or None."""
    if not 3 <= len(bucket) <= 63:
        return f"bucket name {bucket!r} must be 3 to 63 characters"
    if not _BUCKET_CHARACTERS.fullmatch(bucket):
        return f"bucket name {bucket!r} may only hold lower-case letters, digits, '.' and '-'"
    if not (bucket[0].isalnum() and bucket[-1].isalnum()):
        return f"bucket name {bucket!r} must start and end with a letter or digit"
    if ".." in bucket or ".-" in bucket or "-." in bucket:
        return f"bucket name {bucket!r} must not hold '..', '.-' or '-.'"
    try:
        ipaddress.IPv4Address(bucket)
    except ValueError:
        pass
    else:
        return f"bucket name {bucket!r} must not be an IP address"
    if bucket.startswith("xn--") or bucket.endswith("-s3alias"):
        return f"bucket name {bucket!r} uses a reserved prefix (xn--) or suffix (-s3alias)"
    return None


def s3_object_problem(uri: str) -> str | None:
    """What is wrong with `s3://bucket/key` naming one object, or None."""
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if problem := bucket_problem(bucket):
        return problem
    if not key:
        return f"{uri!r} names no object: use s3://bucket/key"
    if key.endswith("/"):
        return f"{uri!r} names a folder, not an object (it ends with '/')"
    if any(part in {".", ".."} for part in key.split("/")):
        return f"{uri!r}: the key must not hold '.' or '..' path segments"
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        return f"{uri!r}: the key must be at most {MAX_KEY_BYTES} bytes of UTF-8"
    return None
