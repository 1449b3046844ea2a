"""Preset resolution and the field paths of validation errors."""

from __future__ import annotations

import pytest

from finetune_core.api import FineTuneJobSpec, ResolvedSpec
from finetune_core.manifest import InvalidManifest, parse_manifest
from tests.support.manifests import EDGE_RESOURCES, finetunejob


def _spec(**overrides: object) -> FineTuneJobSpec:
    return FineTuneJobSpec.model_validate(
        {"model": {"preset": "qwen3-8b"}, "dataset": {"uri": "s3://datasets/v1.jsonl"}, **overrides}
    )


def test_preset_carries_the_seed_plan() -> None:
    resolved = _spec().resolve()
    assert resolved.model_id == "unsloth/Qwen3-8B"
    assert (resolved.lora_r, resolved.lora_alpha, resolved.batch_size) == (24, 24, 4)
    assert resolved.gradient_accumulation_steps == 2
    assert resolved.precision == "bf16"
    assert resolved.load_in_4bit is True
    assert resolved.packing is True


def test_packing_can_be_turned_off_and_old_configs_read_as_packed() -> None:
    assert _spec(training={"packing": False}).resolve().packing is False
    wire = _spec().resolve().to_wire()
    del wire["packing"]  # a config.json written before the field existed
    assert ResolvedSpec.model_validate(wire).packing is True


def test_explicit_fields_override_the_preset() -> None:
    resolved = _spec(
        model={"preset": "qwen3-8b", "loadIn4bit": False, "maxSeqLength": 1024},
        lora={"r": 8, "dropout": 0},
        training={"learningRate": 1e-5, "warmupSteps": 0, "precision": "fp16"},
    ).resolve()
    assert (resolved.load_in_4bit, resolved.max_seq_length) == (False, 1024)
    assert (resolved.lora_r, resolved.lora_alpha, resolved.lora_dropout) == (8, 24, 0)
    assert (resolved.learning_rate, resolved.warmup_steps) == (1e-5, 0)
    assert resolved.precision == "fp16"


def test_a_model_name_without_preset_gets_generic_defaults() -> None:
    resolved = _spec(model={"name": "org/custom-7b"}).resolve()
    assert resolved.model_id == "org/custom-7b"
    assert resolved.preset is None
    assert resolved.optimizer == "adamw_torch"


def test_every_problem_is_reported_with_its_path() -> None:
    doc = finetunejob(
        "ok-name",
        model={},
        dataset={"uri": "gs://bucket/x.jsonl"},
        benchmark={"sla": [{"name": "a", "maxNewTokens": 1, "maxLatencySeconds": 1}] * 2},
    )
    with pytest.raises(InvalidManifest) as raised:
        parse_manifest(doc)
    lines = [str(p) for p in raised.value.problems]
    assert lines == [
        "spec.model: set model.preset or model.name",
        "spec.dataset.uri: unsupported URI scheme gs://; use s3://bucket/key, file:///path or "
        "a relative path",
        "spec.benchmark.sla: duplicate SLA profile name 'a'",
    ]


def test_values_the_cluster_accepts_pass() -> None:
    spec = _spec(
        dataset={"uri": "s3://datasets/cerberus/v3.jsonl", "sha256": "0" * 63 + "f"},
        model={"name": "s3://models/phi-4/"},
        training={"seed": 2**32 - 1, "warmupSteps": 10000},
        resources=EDGE_RESOURCES,
        benchmark={"samples": 1000, "warmup": 100},
    )
    assert spec.dataset.sha256 == "0" * 63 + "f"
    assert spec.resources.memory == "64Gi"


@pytest.mark.parametrize(
    ("section", "value", "path", "message"),
    [
        ("training", {"learningRate": float("nan")}, "learningRate", "finite number"),
        ("training", {"epochs": float("-inf")}, "epochs", "finite number"),
        ("training", {"seed": True}, "seed", "valid integer"),
        ("training", {"maxSteps": "20"}, "maxSteps", "valid integer"),
        ("training", {"packing": "yes"}, "packing", "valid boolean"),
        ("lora", {"dropout": float("nan")}, "dropout", "finite number"),
        ("model", {"preset": "phi-4", "loadIn4bit": "false"}, "loadIn4bit", "valid boolean"),
        ("resources", {"memory": "64GB"}, "memory", "'64GB' is not a Kubernetes quantity"),
        ("resources", {"nodeSelector": {"a/b/c": "x"}}, "nodeSelector", "'a/b/c' is not a label"),
        (
            "resources",
            {"tolerations": [{"effect": "NoSchedule"}]},
            "tolerations[0]",
            "without a key",
        ),
        ("dataset", {"uri": "s3://datasets/v3.jsonl", "sha256": "x"}, "sha256", "not a sha256"),
    ],
)
def test_refused_values_name_their_field(
    section: str, value: dict[str, object], path: str, message: str
) -> None:
    with pytest.raises(InvalidManifest) as raised:
        parse_manifest(finetunejob("ok-name", **{section: value}))
    [problem] = raised.value.problems
    assert problem.path == f"spec.{section}.{path}"
    assert message in problem.message


@pytest.mark.parametrize(
    ("namespace", "message"),
    [
        ("../ml", "'../ml' is not a DNS label"),
        ("ML", "'ML' is not a DNS label"),
        ("team/a", "'team/a' is not a DNS label"),
        ("ml\n", "'ml\\n' is not a DNS label"),
        ("", "must not be empty"),
        ("n" * 64, "must be at most 63 characters (it is 64)"),
        (7, "must be a string (a DNS label)"),
    ],
)
def test_a_namespace_must_be_a_dns_label(namespace: object, message: str) -> None:
    doc = finetunejob("ok-name")
    doc["metadata"]["namespace"] = namespace
    with pytest.raises(InvalidManifest) as raised:
        parse_manifest(doc)
    [problem] = raised.value.problems
    assert problem.path == "metadata.namespace"
    assert problem.message.startswith(message)


def test_a_dns_label_namespace_is_kept() -> None:
    assert parse_manifest(finetunejob("ok-name", namespace="team-a1")).namespace == "team-a1"
    assert parse_manifest(finetunejob("ok-name")).namespace is None


@pytest.mark.parametrize(
    ("metadata", "line"),
    [
        ({"name": "demo\n"}, "metadata.name: must be lower-case letters"),
        ({"name": "a\n" * 30}, "metadata.name: must be at most 49 characters (it is 60)"),
        ({"name": "demo", "generation": "3"}, "metadata.generation: must be an integer in 1.."),
        ({"name": "demo", "generation": 2**63}, "metadata.generation: must be an integer in 1.."),
        ({"name": "demo", "annotations": ["a"]}, "metadata.annotations: must be a mapping"),
        ({"name": "demo", "annotations": {"a": 1}}, "metadata.annotations: must be a mapping"),
        ({"name": "demo", "labels": {"a b": "c"}}, "metadata.labels: 'a b' is not a label key"),
        ({"name": "demo", "labels": {"a": 1}}, "metadata.labels: 'a': keys and values must be"),
        ({"name": "demo", "labels": "x"}, "metadata.labels: must be a mapping of label keys"),
        (True, "metadata: must be a mapping (with the name)"),
        (None, "metadata.name: required"),
    ],
)
def test_metadata_problems_are_one_line_naming_the_field(metadata: object, line: str) -> None:
    doc = finetunejob("ok-name")
    doc["metadata"] = metadata
    with pytest.raises(InvalidManifest) as raised:
        parse_manifest(doc)
    [problem] = raised.value.problems
    assert str(problem).startswith(line)
    assert len(str(problem).splitlines()) == 1


@pytest.mark.parametrize(
    ("spec", "line"),
    [
        ({"a\x1eb": 1}, "spec['a\\x1eb']: unknown field"),
        ({"\r": 1}, "spec['\\r']: unknown field"),
        ({"model-x": 1}, "spec.model-x: unknown field"),
        (
            {"resources": {"nodeSelector": {"kubernetes.io/os": 1}}},
            "spec.resources.nodeSelector['kubernetes.io/os']: Input should be a valid string",
        ),
        ({"dataset": {"uri": "a\n://b"}}, "spec.dataset.uri: unsupported URI scheme 'a\\n://b'"),
    ],
)
def test_a_field_path_is_one_line_whatever_the_keys(spec: dict[str, object], line: str) -> None:
    doc = finetunejob("ok-name")
    doc["spec"].update(spec)
    with pytest.raises(InvalidManifest) as raised:
        parse_manifest(doc)
    [problem] = raised.value.problems
    assert str(problem).startswith(line)
    assert len(str(problem).splitlines()) == 1


@pytest.mark.parametrize("section", [{"training": {"epochs": True}}, {"lora": {"dropout": False}}])
def test_a_boolean_is_not_a_number(section: dict[str, object]) -> None:
    """YAML's `true` where a number belongs: the API server refuses it, so must we."""
    with pytest.raises(InvalidManifest, match="number"):
        parse_manifest(finetunejob("flags", **section))
