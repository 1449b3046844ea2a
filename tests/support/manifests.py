"""FineTuneJob manifests for tests: one builder, spec sections given as keyword arguments."""

from __future__ import annotations

import copy
from typing import Any

from finetune_core.api import API_VERSION, KIND

# The quickstart's shape, small: a CPU job on SmolLM2 with two SLA profiles.
SMALL_SPEC: dict[str, Any] = {
    "model": {"preset": "smollm2-135m"},
    "resources": {"gpus": 0},
    "training": {"maxSteps": 4, "saveSteps": 2},
    "benchmark": {
        "samples": 5,
        "sla": [
            {"name": "question", "maxNewTokens": 48, "maxLatencySeconds": 10},
            {"name": "answer", "maxNewTokens": 24, "maxLatencySeconds": 6},
        ],
    },
}


# Resources at the edges of what a cluster accepts (quantities, labels, tolerations).
EDGE_RESOURCES: dict[str, Any] = {
    "cpu": "500m",
    "memory": "64Gi",
    "shmSize": "1.5Gi",
    "nodeSelector": {"kubernetes.io/hostname": "node-1", "pool": ""},
    "tolerations": [
        {"operator": "Exists"},
        {"key": "amd.com/gpu", "operator": "Exists", "value": "", "effect": "NoSchedule"},
        {"key": "dedicated", "value": "ml", "effect": "NoExecute"},
        {"key": "dedicated", "operator": "Equal", "value": ""},
    ],
}


def finetunejob(
    name: str = "demo",
    *,
    namespace: str | None = None,
    generation: int | None = None,
    uid: str | None = None,
    annotations: dict[str, str] | None = None,
    status: dict[str, Any] | None = None,
    base: dict[str, Any] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """A FineTuneJob: `base` (default: a GPU-less phi-4 spec with only model and dataset)
    with the top-level spec sections in `spec` replaced; metadata and status as given."""
    body = copy.deepcopy(
        base
        if base is not None
        else {"model": {"preset": "phi-4"}, "dataset": {"uri": "s3://datasets/a.jsonl"}}
    )
    body.update(spec)
    metadata: dict[str, Any] = {"name": name}
    for key, value in (
        ("namespace", namespace),
        ("generation", generation),
        ("uid", uid),
        ("annotations", annotations),
    ):
        if value is not None:
            metadata[key] = value
    obj: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": metadata,
        "spec": body,
    }
    if status is not None:
        obj["status"] = status
    return obj


def small_job(name: str, dataset: str, **spec: Any) -> dict[str, Any]:
    """A small CPU job (the quickstart's shape) on `dataset`."""
    return finetunejob(name, base={**SMALL_SPEC, "dataset": {"uri": dataset}}, **spec)
