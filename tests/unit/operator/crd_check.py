"""Checking objects against the generated CRD the way the API server would, without one.

The openAPIV3Schema is OpenAPI v3.0, whose bounds (`exclusiveMinimum: true`) are JSON Schema
draft 4's. kubectl's strict field validation (its default) refuses unknown fields, which the
schema leaves to pruning, so the check closes every object schema. CEL rules run on the
cel-python interpreter, and list-map keys are checked for duplicates.
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import celpy
import jsonschema

from finetune_core.tournament import TOURNAMENT_KIND
from finetune_operator.crd import Schema, crd_dict, tournament_crd_dict

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "manifests" / "examples"
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml"))


def open_api_schema() -> Schema:
    return crd_dict()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _closed(schema: Schema) -> Schema:
    """A copy that refuses fields the schema does not declare."""
    schema = copy.deepcopy(schema)
    stack = [schema]
    while stack:
        node = stack.pop()
        if "properties" in node:
            node["additionalProperties"] = False
            stack += node["properties"].values()
        if isinstance(node.get("items"), dict):
            stack.append(node["items"])
    return schema


def _dotted(path: Any) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path)[1:]


def _rule_problems(schema: Schema, value: Any, path: str) -> list[str]:
    """Evaluate x-kubernetes-validations and list-map uniqueness where the value is present."""
    env = celpy.Environment()
    problems = []
    for rule in schema.get("x-kubernetes-validations", []):
        program = env.program(env.compile(rule["rule"]))
        try:
            passed = bool(program.evaluate({"self": celpy.json_to_cel(value)}))
        except celpy.CELEvalError:  # a field the rule reads is missing
            passed = False
        except ValueError:  # an integer beyond int64, which the API server refuses anyway
            problems.append(f"{path or '<root>'}: a number out of the int64 range")
            continue
        if not passed:
            problems.append(f"{path or '<root>'}: {rule['message']}")
    if isinstance(value, dict):
        for key, item in value.items():
            if key in schema.get("properties", {}):
                child = f"{path}.{key}" if path else key
                problems += _rule_problems(schema["properties"][key], item, child)
    elif isinstance(value, list) and "items" in schema:
        keys = schema.get("x-kubernetes-list-map-keys")
        seen = set()
        for index, item in enumerate(value):
            if keys and isinstance(item, dict):
                key = tuple(item.get(k) for k in keys)
                if key in seen:
                    problems.append(f"{path}[{index}]: duplicate {keys} {key}")
                seen.add(key)
            problems += _rule_problems(schema["items"], item, f"{path}[{index}]")
    return problems


@cache
def _schema(kind: str = "FineTuneJob") -> Schema:
    """Generated once per kind: generating it is most of the cost of a check."""
    if kind == TOURNAMENT_KIND:
        return tournament_crd_dict()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return open_api_schema()


@cache
def _validator(kind: str = "FineTuneJob") -> jsonschema.Draft4Validator:
    return jsonschema.Draft4Validator(_closed(_schema(kind)))


def crd_problems(document: dict[str, Any]) -> list[str]:
    """Problems the API server would report for a FineTuneJob (or, by its kind, a
    FineTuneTournament), one line each (path: what)."""
    kind = TOURNAMENT_KIND if document.get("kind") == TOURNAMENT_KIND else "FineTuneJob"
    problems = [
        f"{_dotted(error.absolute_path)}: {error.message}"
        for error in _validator(kind).iter_errors(document)
    ]
    return problems + _rule_problems(_schema(kind), document, "")
