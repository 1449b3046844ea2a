"""benchmark.json's description of where it was measured and what trained the adapter."""

from __future__ import annotations

from finetune_trainer.environment import describe_environment, library_versions


def test_the_description_names_the_backend_that_trained_the_adapter() -> None:
    described = describe_environment("cpu", "transformers")
    assert described.startswith("cpu: ") and described.endswith("; trained with transformers")


def test_a_run_without_a_recorded_backend_describes_the_device_only() -> None:
    described = describe_environment("cpu", None)
    assert described.startswith("cpu: ") and "trained" not in described


def test_versions_name_python_and_torch() -> None:
    versions = library_versions()
    assert {"python", "torch"} <= set(versions)
