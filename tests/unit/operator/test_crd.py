"""The generated CRD: committed copy up to date, structural, documented, accepted by the
Kubernetes API schemas, and agreeing with the examples."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic import BaseModel, Field

from finetune_core.api import MAX_NAME_LENGTH
from finetune_core.syntax import LABEL_VALUE_PATTERN, QUANTITY_PATTERN
from finetune_operator.crd import (
    Schema,
    all_crds_yaml,
    crd_dict,
    crd_yaml,
    node_at,
    structural_schema,
    tournament_crd_dict,
    tournament_crd_yaml,
)
from tests.support.manifests import EDGE_RESOURCES, finetunejob

from .crd_check import EXAMPLE_FILES, REPO, crd_problems, open_api_schema

COMMITTED = REPO / "manifests" / "crd" / "finetunejobs.finetune.dev.yaml"
KUBERNETES_VERSIONS = ["1.30", kubernetes_validate.latest_version().rsplit(".", 1)[0]]

# What a structural schema node may contain.
ALLOWED_KEYS = {
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
    "x-kubernetes-validations",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
}
JSON_TYPES: dict[str, type | tuple[type, ...]] = {
    "string": str,
    "boolean": bool,
    "integer": int,
    "number": (int, float),
}


def walk(node: Schema, path: str = "") -> Iterator[tuple[str, Schema]]:
    """Every schema node with its field path; items as `[]`, map values as `{}`."""
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}" if path else name)
    if "items" in node:
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


def properties(node: Schema) -> Iterator[tuple[str, Schema]]:
    for path, schema in walk(node):
        for name, child in schema.get("properties", {}).items():
            yield f"{path}.{name}" if path else name, child


def test_committed_crd_is_generated_from_the_models() -> None:
    assert COMMITTED.read_text(encoding="utf-8") == crd_yaml(), (
        f"{COMMITTED.relative_to(REPO)} is out of date with core/finetune_core/api.py: "
        "run `make crd` and commit the result"
    )


def test_yaml_round_trips_to_the_dict() -> None:
    assert yaml.safe_load(crd_yaml()) == crd_dict()


def test_names_and_version() -> None:
    crd = crd_dict()
    assert crd["metadata"]["name"] == "finetunejobs.finetune.dev"
    spec = crd["spec"]
    assert spec["group"] == "finetune.dev"
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": "FineTuneJob",
        "listKind": "FineTuneJobList",
        "plural": "finetunejobs",
        "singular": "finetunejob",
        "shortNames": ["ftj"],
        "categories": ["finetune"],
    }
    [version] = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_crd_is_a_valid_kubernetes_object(version: str) -> None:
    assert kubernetes_validate.validate(crd_dict(), version, strict=True) == version


def test_every_property_has_a_description() -> None:
    # metadata is the API server's own: it refuses a description there.
    missing = [
        path
        for path, node in properties(open_api_schema())
        if not node.get("description") and path != "metadata"
    ]
    assert not missing, f"properties without a description (kubectl explain): {missing}"
    assert len(list(properties(open_api_schema()))) > 80  # the walk reaches the leaves


def test_kubectl_explain_reaches_nested_fields() -> None:
    schema = open_api_schema()
    assert "Rank" in node_at(schema, "spec.lora.r")["description"]
    assert "toleration" in node_at(schema, "spec.resources.tolerations")["items"]["description"]
    assert "\n" not in node_at(schema, "spec.resources")["description"]


def test_schema_is_structural() -> None:
    problems = []
    for path, node in walk(open_api_schema()):
        if unknown := set(node) - ALLOWED_KEYS:
            problems.append(f"{path}: not allowed in a structural schema: {sorted(unknown)}")
        if "type" not in node:
            problems.append(f"{path}: no type")
        if "properties" in node and "additionalProperties" in node:
            problems.append(f"{path}: properties and additionalProperties together")
        if node.get("type") == "array" and "items" not in node:
            problems.append(f"{path}: array without items")
        for bound, limit in [("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")]:
            if bound in node and (node[bound] is not True or limit not in node):
                problems.append(f"{path}: {bound} must be true beside {limit} (OpenAPI v3.0)")
        for name in node.get("required", []):
            if name not in node.get("properties", {}):
                problems.append(f"{path}: required {name!r} is not a property")
        for key in node.get("x-kubernetes-list-map-keys", []):
            if key not in node["items"].get("required", []):
                problems.append(f"{path}: list-map key {key!r} must be required")
        values = [*node.get("enum", []), *([node["default"]] if "default" in node else [])]
        expected = JSON_TYPES.get(node.get("type", ""), object)
        for value in values:
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                problems.append(f"{path}: {value!r} is not a {node['type']}")
        if "default" in node:
            for error in jsonschema.Draft4Validator(node).iter_errors(node["default"]):
                problems.append(f"{path}: default {node['default']!r}: {error.message}")
    assert not problems, "\n".join(problems)
    # kube-apiserver accepts nothing in metadata but its type (and constraints on name and
    # generateName): a description made it reject the whole CRD.
    assert open_api_schema()["properties"]["metadata"] == {"type": "object"}


def test_optional_and_bounded_fields_are_converted() -> None:
    schema = open_api_schema()
    assert node_at(schema, "spec.lora.r") == {
        "description": "Rank of the adapter, 1..1024.",
        "type": "integer",
        "minimum": 1,
        "maximum": 1024,
    }
    split = node_at(schema, "spec.dataset.validationSplit")
    assert (split["minimum"], split["exclusiveMinimum"]) == (0, True)
    assert (split["maximum"], split["exclusiveMaximum"]) == (0.5, True)
    assert split["default"] == 0.1
    assert node_at(schema, "spec.training.precision")["enum"] == ["bf16", "fp16", "fp32"]
    assert node_at(schema, "spec.resources.nodeSelector")["additionalProperties"] == {
        "type": "string",
        "maxLength": 63,
        "pattern": LABEL_VALUE_PATTERN,
    }
    assert node_at(schema, "spec.resources.memory")["pattern"] == QUANTITY_PATTERN
    assert node_at(schema, "spec.training.seed") | {"description": ""} == {
        "description": "",
        "type": "integer",
        "default": 3407,
        "minimum": 0,
        "maximum": 2**32 - 1,
    }
    assert "smollm2-135m" in node_at(schema, "spec.model.preset")["enum"]
    assert node_at(schema, "spec")["required"] == ["model", "dataset"]
    # Defaults built by a factory (objects, lists) are left to the operator.
    assert "default" not in node_at(schema, "spec.benchmark.sla")
    assert "default" not in node_at(schema, "spec.lora")


def test_printer_columns_show_typed_status_fields() -> None:
    version = crd_dict()["spec"]["versions"][0]
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert list(columns) == ["Phase", "Model", "Progress", "Loss", "SLA", "GPU-h", "Age"]
    assert columns["Age"] == {
        "name": "Age",
        "type": "date",
        "jsonPath": ".metadata.creationTimestamp",
        "description": "Time since the object was created.",
    }
    schema = version["schema"]["openAPIV3Schema"]
    for name in ["Phase", "Model", "Progress", "Loss", "SLA", "GPU-h"]:
        column = columns[name]
        field = node_at(schema, column["jsonPath"].lstrip("."))
        assert column["type"] == field["type"], name
        assert column["description"] == field["description"]
    assert columns["Progress"]["jsonPath"] == ".status.progress.percent"
    assert columns["GPU-h"]["jsonPath"] == ".status.cost.gpuHours"


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_examples_pass_the_crd_schema(path: Path) -> None:
    [document] = yaml.safe_load_all(path.read_text(encoding="utf-8"))
    assert crd_problems(document) == []


def _job(**changes: Any) -> dict[str, Any]:
    return finetunejob("demo", **changes)


def test_cel_rules_match_the_model_validators() -> None:
    assert crd_problems(_job(model={"name": "unsloth/Qwen3-8B"})) == []
    assert crd_problems(_job(model={"maxSeqLength": 2048})) == [
        "spec.model: set model.preset or model.name"
    ]
    assert crd_problems(_job(model={"name": ""})) == ["spec.model: set model.preset or model.name"]
    long_name = _job()
    long_name["metadata"]["name"] = "a" * (MAX_NAME_LENGTH + 1)
    [problem] = crd_problems(long_name)
    assert problem.startswith(f"<root>: metadata.name must be at most {MAX_NAME_LENGTH}")
    long_name["metadata"]["name"] = "a" * MAX_NAME_LENGTH
    assert crd_problems(long_name) == []


def test_unknown_fields_and_duplicate_profiles_are_refused() -> None:
    assert crd_problems(_job(lora={"rank": 8})) == [
        "spec.lora: Additional properties are not allowed ('rank' was unexpected)"
    ]
    profile = {"name": "q", "maxNewTokens": 10, "maxLatencySeconds": 1}
    [problem] = crd_problems(_job(benchmark={"sla": [profile, profile]}))
    assert problem.startswith("spec.benchmark.sla[1]: duplicate ['name']")


class _Union(BaseModel):
    value: int | str = Field(description="Either.")


class _Untyped(BaseModel):
    value: Any = Field(description="Anything.")


@pytest.mark.parametrize(
    ("model", "message"),
    [(_Union, "probe.value: a union of .* has no structural"), (_Untyped, "probe.value: untyped")],
)
def test_conversion_refuses_what_a_structural_schema_cannot_say(
    model: type[BaseModel], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        structural_schema(model, "probe")


def test_values_the_cluster_accepts_pass_the_new_rules() -> None:
    resources = EDGE_RESOURCES
    dataset = {"uri": "s3://datasets/v3.jsonl", "sha256": "0123456789abcdef" * 4}
    training = {"seed": 2**32 - 1, "warmupSteps": 10000}
    assert crd_problems(_job(resources=resources, dataset=dataset, training=training)) == []


# ------------------------------------------------------------------ FineTuneTournament


def test_committed_tournament_crd_is_generated_from_the_models() -> None:
    committed = REPO / "manifests" / "crd" / "finetunetournaments.finetune.dev.yaml"
    assert committed.read_text(encoding="utf-8") == tournament_crd_yaml(), (
        f"{committed.relative_to(REPO)} is out of date: run `make crd` and commit the result"
    )


def test_finetune_crd_prints_both_kinds() -> None:
    kinds = [doc["spec"]["names"]["kind"] for doc in yaml.safe_load_all(all_crds_yaml())]
    assert kinds == ["FineTuneJob", "FineTuneTournament"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_tournament_crd_is_a_valid_structural_kubernetes_object(version: str) -> None:
    crd = tournament_crd_dict()
    assert kubernetes_validate.validate(crd, version, strict=True) == version
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in walk(schema):
        assert set(node) <= ALLOWED_KEYS, path
        assert "type" in node, path
    assert crd["spec"]["names"]["shortNames"] == ["ftt"]
    columns = [c["name"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert columns == ["Phase", "Leader", "Done", "Age"]


def test_a_candidate_is_a_partial_spec_the_api_server_does_not_default() -> None:
    schema = tournament_crd_dict()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    candidate = node_at(schema, "spec.candidates")["items"]
    assert candidate["required"] == ["name"]
    assert "Rank" in node_at(candidate, "lora.r")["description"]
    for path, node in walk(node_at(schema, "spec.template")):
        assert "default" not in node and "required" not in node, path
    for path, node in walk(candidate):
        assert "default" not in node, path
