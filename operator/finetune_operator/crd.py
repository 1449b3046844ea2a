"""The FineTuneJob and FineTuneTournament CustomResourceDefinitions, generated from the API
models in finetune_core.api and finetune_core.tournament.

Pydantic writes JSON Schema (draft 2020-12); the API server wants a *structural* OpenAPI v3.0
schema: every node typed, `$ref`s inlined, no `anyOf` for optional fields, no titles, and
exclusive bounds as booleans beside `minimum`/`maximum`. `structural_schema` does that
conversion and refuses any construct it has no structural equivalent for, so a new kind of
field fails `make crd` instead of producing a CRD the API server rejects.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import yaml
from pydantic import BaseModel

from finetune_core.api import (
    CATEGORIES,
    GROUP,
    KIND,
    MAX_NAME_LENGTH,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
    FineTuneJobSpec,
    FineTuneJobStatus,
)
from finetune_core.presets import PRESETS
from finetune_core.tournament import (
    MAX_CANDIDATES,
    MIN_CANDIDATES,
    TOURNAMENT_KIND,
    TOURNAMENT_PLURAL,
    TOURNAMENT_SHORT_NAMES,
    TOURNAMENT_SINGULAR,
    FineTuneTournamentSpec,
    FineTuneTournamentStatus,
)

Schema = dict[str, Any]

HEADER = (
    "# Generated from core/finetune_core/api.py by `finetune crd`; do not edit.\n"
    "# After changing the API models, run `make crd`.\n"
)

# Keywords of a structural schema, in the order they are written out. Those not handled
# specially by `_convert` mean the same in JSON Schema.
_ORDER = (
    "description",
    "type",
    "format",
    "enum",
    "default",
    "minimum",
    "exclusiveMinimum",
    "maximum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "required",
    "properties",
    "items",
    "additionalProperties",
    # CEL rules a model states itself (json_schema_extra), beside those in _EXTRA below.
    "x-kubernetes-validations",
)
_EXCLUSIVE = {"exclusiveMinimum": "minimum", "exclusiveMaximum": "maximum"}

# What the models cannot say, by field path: rules the API server checks at admission.
_EXTRA: dict[str, Schema] = {
    "spec.model": {
        "x-kubernetes-validations": [
            {
                "rule": "has(self.preset) || (has(self.name) && self.name != '')",
                "message": "set model.preset or model.name",
            }
        ]
    },
    "spec.model.preset": {"enum": list(PRESETS)},
    # Unique profile names, enforced by the API server (and merge-friendly for apply).
    "spec.benchmark.sla": {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    "status.conditions": {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
}

_NAME_RULE = {
    "rule": f"self.metadata.name.size() <= {MAX_NAME_LENGTH}",
    "message": f"metadata.name must be at most {MAX_NAME_LENGTH} characters: it names the "
    "Jobs <name>-g<generation>-train and -bench",
}

# (column, JSON path, type); descriptions come from the status schema.
_COLUMNS = [
    ("Phase", ".status.phase", "string"),
    ("Model", ".status.model", "string"),
    ("Progress", ".status.progress.percent", "integer"),
    ("Loss", ".status.progress.loss", "number"),
    ("SLA", ".status.sla", "string"),
    ("GPU-h", ".status.cost.gpuHours", "number"),
]


def structural_schema(model: type[BaseModel], path: str) -> Schema:
    """The model's JSON Schema as a structural schema; `path` names fields in errors."""
    schema = model.model_json_schema(by_alias=True, mode="validation")
    return _convert(schema, schema.get("$defs", {}), path)


def _inline(node: Schema, defs: dict[str, Schema], path: str) -> Schema:
    """Replace a `$ref` (or `X | None`) by its target; the referring node's keys win, so a
    field's own description and default override the referenced model's docstring."""
    node = dict(node)
    if "anyOf" in node:
        options = [option for option in node.pop("anyOf") if option.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"{path}: a union of {options} has no structural equivalent")
        node = {**_inline(options[0], defs, path), **node}
        if node.get("default", ...) is None:
            del node["default"]
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        node = {**_inline(target, defs, path), **node}
    return node


def _convert(node: Schema, defs: dict[str, Schema], path: str) -> Schema:
    out: Schema = {}
    for key, value in _inline(node, defs, path).items():
        if key in {"title", "$defs"} or (key == "additionalProperties" and value is False):
            continue  # unknown fields are pruned (and refused by `kubectl --validate=strict`)
        if key == "properties":
            out[key] = {name: _convert(sub, defs, f"{path}.{name}") for name, sub in value.items()}
        elif key in {"items", "additionalProperties"}:
            out[key] = _convert(value, defs, f"{path}[]")
        elif key in _EXCLUSIVE:
            out[_EXCLUSIVE[key]] = value
            out[key] = True
        elif key == "description":
            out[key] = " ".join(value.split())
        elif key in _ORDER:
            # A copy: a model used by two fields (DatasetSpec) must not share its lists, or
            # the YAML would carry anchors and aliases.
            out[key] = copy.deepcopy(value)
        else:
            raise ValueError(f"{path}: {key!r} has no structural equivalent")
    if "type" not in out:
        raise ValueError(f"{path}: untyped schema")
    return {key: out[key] for key in sorted(out, key=_ORDER.index)}


def node_at(schema: Schema, path: str) -> Schema:
    """The schema of a dotted field path below an object schema (`spec.lora.r`)."""
    for name in path.split("."):
        schema = schema["properties"][name]
    return schema


def open_api_schema() -> Schema:
    """The openAPIV3Schema of the FineTuneJob resource."""
    schema: Schema = {
        "type": "object",
        "description": "A FineTuneJob fine-tunes a base model with LoRA on a dataset, measures "
        "the adapted model's generation latency against an SLA, and promotes it only when "
        "every SLA profile passes. Editing the spec starts a new run.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {
                "type": "string",
                "description": "Versioned schema of this object: finetune.dev/v1alpha1.",
            },
            "kind": {"type": "string", "description": "The object's type: FineTuneJob."},
            # kube-apiserver refuses any other keyword here (a description included): the
            # name's limit is the root's CEL rule below.
            "metadata": {"type": "object"},
            "spec": structural_schema(FineTuneJobSpec, "spec"),
            "status": structural_schema(FineTuneJobStatus, "status"),
        },
        "x-kubernetes-validations": [_NAME_RULE],
    }
    for path, extra in _EXTRA.items():
        node_at(schema, path).update(extra)
    return schema


def printer_columns(schema: Schema) -> list[Schema]:
    """`kubectl get` columns, described by the status fields they show."""
    return [
        *(
            {
                "name": name,
                "type": kind,
                "jsonPath": json_path,
                "description": node_at(schema, json_path.lstrip("."))["description"],
            }
            for name, json_path, kind in _COLUMNS
        ),
        {
            "name": "Age",
            "type": "date",
            "jsonPath": ".metadata.creationTimestamp",
            "description": "Time since the object was created.",
        },
    ]


def crd_dict() -> Schema:
    """The CustomResourceDefinition as a dict (apiextensions.k8s.io/v1)."""
    schema = open_api_schema()
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": list(CATEGORIES),
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": printer_columns(schema),
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


def crd_yaml() -> str:
    """The CRD as the YAML committed in manifests/crd/ (what `finetune crd` prints)."""
    return HEADER + yaml.safe_dump(crd_dict(), sort_keys=False, width=100, allow_unicode=True)


# ------------------------------------------------------------------ FineTuneTournament

_TOURNAMENT_COLUMNS = [
    ("Phase", ".status.phase", "string"),
    ("Leader", ".status.leader", "string"),
    ("Done", ".status.done", "string"),
]
# Dropped from the FineTuneJob schema where it describes a partial spec (a template, a
# candidate): nothing is required there, and nothing may be defaulted by the API server (a
# defaulted field of a candidate would override the template's).
_LOOSE_DROPS = ("required", "default", "x-kubernetes-validations")


def _loose(node: Schema) -> Schema:
    out: Schema = {}
    for key, value in node.items():
        if key in _LOOSE_DROPS:
            continue
        if key == "properties":
            out[key] = {name: _loose(child) for name, child in value.items()}
        elif key in {"items", "additionalProperties"} and isinstance(value, dict):
            out[key] = _loose(value)
        else:
            out[key] = value
    return out


def tournament_spec_schema() -> Schema:
    """The tournament's spec: the template and each candidate are partial FineTuneJob specs
    (checked in full by the operator once merged); the rest comes from the models."""
    raw = FineTuneTournamentSpec.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    fields = raw["properties"]
    partial = _loose(structural_schema(FineTuneJobSpec, "spec.template"))
    name = _convert(defs["Candidate"]["properties"]["name"], defs, "spec.candidates[].name")
    candidate = {
        **partial,
        "description": " ".join(defs["Candidate"]["description"].split()),
        "required": ["name"],
        "properties": {"name": name, **copy.deepcopy(partial["properties"])},
    }
    candidates = {
        "description": " ".join(fields["candidates"]["description"].split()),
        "type": "array",
        "minItems": MIN_CANDIDATES,
        "maxItems": MAX_CANDIDATES,
        "items": candidate,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["name"],
    }
    described = " ".join(fields["template"]["description"].split())
    template = {**copy.deepcopy(partial), "description": described}
    return {
        "description": " ".join(FineTuneTournamentSpec.__doc__.split()),  # type: ignore[union-attr]
        "type": "object",
        "required": ["candidates"],
        "properties": {
            "template": template,
            "candidates": candidates,
            **{
                key: _convert(fields[key], defs, f"spec.{key}")
                for key in ("selection", "maxParallel", "promotion")
            },
        },
    }


def tournament_open_api_schema() -> Schema:
    schema: Schema = {
        "type": "object",
        "description": "A FineTuneTournament trains several candidate FineTuneJobs (a template "
        "plus each candidate's own settings), ranks those that meet the latency SLA by a "
        "quality metric and promotes the best. Editing the spec starts a new generation.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {
                "type": "string",
                "description": "Versioned schema of this object: finetune.dev/v1alpha1.",
            },
            "kind": {"type": "string", "description": "The object's type: FineTuneTournament."},
            "metadata": {"type": "object"},
            "spec": tournament_spec_schema(),
            "status": structural_schema(FineTuneTournamentStatus, "status"),
        },
    }
    node_at(schema, "status.conditions").update(_EXTRA["status.conditions"])
    return schema


def tournament_crd_dict() -> Schema:
    """The FineTuneTournament CustomResourceDefinition (apiextensions.k8s.io/v1)."""
    schema = tournament_open_api_schema()
    columns = [
        {
            "name": name,
            "type": kind,
            "jsonPath": json_path,
            "description": node_at(schema, json_path.lstrip("."))["description"],
        }
        for name, json_path, kind in _TOURNAMENT_COLUMNS
    ]
    columns.append(
        {
            "name": "Age",
            "type": "date",
            "jsonPath": ".metadata.creationTimestamp",
            "description": "Time since the object was created.",
        }
    )
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{TOURNAMENT_PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": TOURNAMENT_KIND,
                "listKind": f"{TOURNAMENT_KIND}List",
                "plural": TOURNAMENT_PLURAL,
                "singular": TOURNAMENT_SINGULAR,
                "shortNames": list(TOURNAMENT_SHORT_NAMES),
                "categories": list(CATEGORIES),
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


def tournament_crd_yaml() -> str:
    """The FineTuneTournament CRD as committed in manifests/crd/."""
    # Through JSON first: nodes the schema shares would otherwise become YAML anchors.
    plain = json.loads(json.dumps(tournament_crd_dict()))
    return HEADER + yaml.safe_dump(plain, sort_keys=False, width=100, allow_unicode=True)


CRD_FILES = {
    KIND: (f"{PLURAL}.{GROUP}.yaml", crd_yaml),
    TOURNAMENT_KIND: (f"{TOURNAMENT_PLURAL}.{GROUP}.yaml", tournament_crd_yaml),
}
"""Each kind's CRD: the file it is committed as (manifests/crd/, the chart's crds/) and its
generator."""


def all_crds_yaml() -> str:
    """Both CRDs, as one multi-document YAML stream (what `finetune crd` prints)."""
    return "---\n".join(generate() for _, generate in CRD_FILES.values())
