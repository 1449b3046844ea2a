"""FINETUNE_BACKEND: which library trains, and a required unsloth that cannot be imported
is a clear failure (error.json and exit code), never a silent fallback."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from finetune_core.api import FineTuneJobSpec, RunConfig
from finetune_core.exit_codes import EXIT_FAILED, EXIT_INVALID_INPUT
from finetune_core.layout import RunPaths
from finetune_core.store import LocalStore
from finetune_trainer import backend
from finetune_trainer.backend import (
    BACKEND_ENV,
    backend_setting,
    choose_backend,
    select_backend,
)
from finetune_trainer.stage import StageFailure

RUN = RunPaths("ml", "backend", 1)
ROW = {"messages": [{"role": "user", "content": "hi?"}, {"role": "assistant", "content": "yo"}]}


class Loader:
    """Stands in for `import unsloth`: counts calls, raises `error` if given."""

    def __init__(self, error: Exception | None = None):
        self.error = error
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1
        if self.error is not None:
            raise self.error


@pytest.fixture(autouse=True)
def fresh_choice() -> Iterator[None]:
    select_backend.cache_clear()
    yield
    select_backend.cache_clear()


@pytest.mark.parametrize(
    ("value", "setting"),
    [
        (None, "auto"),
        ("", "auto"),
        ("auto", "auto"),
        ("Unsloth", "unsloth"),
        (" transformers", "transformers"),
    ],
)
def test_the_setting_defaults_to_auto(value: str | None, setting: str) -> None:
    environ = {} if value is None else {BACKEND_ENV: value}
    assert backend_setting(environ) == setting


def test_an_unknown_setting_is_invalid_input_naming_the_choices() -> None:
    with pytest.raises(StageFailure) as raised:
        backend_setting({BACKEND_ENV: "vllm"})
    assert raised.value.exit_code == EXIT_INVALID_INPUT
    assert raised.value.reason == "InvalidBackendSetting"
    assert "'vllm'" in str(raised.value) and "auto, unsloth, transformers" in str(raised.value)


def test_transformers_is_forced_even_on_a_gpu_and_unsloth_is_never_imported() -> None:
    loader = Loader()
    assert choose_backend("transformers", gpu=True, load_unsloth=loader) == "transformers"
    assert loader.calls == 0


def test_auto_uses_unsloth_on_a_gpu_and_transformers_without_one() -> None:
    loader = Loader()
    assert choose_backend("auto", gpu=False, load_unsloth=loader) == "transformers"
    assert loader.calls == 0  # import unsloth raises without a GPU: never tried
    assert choose_backend("auto", gpu=True, load_unsloth=loader) == "unsloth"
    assert loader.calls == 1


def test_auto_falls_back_with_a_warning_when_unsloth_is_broken(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broken = Loader(ImportError("libcudart.so.12: cannot open shared object file"))
    assert choose_backend("auto", gpu=True, load_unsloth=broken) == "transformers"
    assert "libcudart.so.12" in caplog.text


@pytest.mark.parametrize("gpu", [True, False])
def test_a_required_unsloth_that_does_not_import_names_the_cause(gpu: bool) -> None:
    broken = Loader(ImportError("libcudart.so.12: cannot open shared object file"))
    with pytest.raises(StageFailure) as raised:
        choose_backend("unsloth", gpu=gpu, load_unsloth=broken)
    assert raised.value.reason == "BackendUnavailable"
    assert raised.value.exit_code == EXIT_FAILED
    assert str(raised.value) == (
        "FINETUNE_BACKEND=unsloth but unsloth cannot be used: "
        "ImportError: libcudart.so.12: cannot open shared object file"
    )


def test_a_required_unsloth_without_a_gpu_is_unavailable_even_if_it_imports() -> None:
    with pytest.raises(StageFailure, match="torch sees no GPU"):
        choose_backend("unsloth", gpu=False, load_unsloth=Loader())


def test_the_process_choice_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(backend, "import_unsloth", Loader(AssertionError("must not import")))
    monkeypatch.setenv(BACKEND_ENV, "transformers")
    assert select_backend() == "transformers"


def write_run(store: LocalStore, tmp_path: Path) -> str:
    dataset = tmp_path / "data.jsonl"
    dataset.write_text("".join(json.dumps(ROW) + "\n" for _ in range(4)))
    spec = FineTuneJobSpec.model_validate(
        {"model": {"preset": "smollm2-135m"}, "dataset": {"uri": str(dataset)}}
    ).resolve()
    config = RunConfig(namespace=RUN.namespace, name=RUN.name, generation=1, spec=spec)
    store.put_json(RUN.config, config.to_wire())
    return store.uri(RUN.prefix)


@pytest.mark.parametrize("stage", ["train", "benchmark"])
def test_a_stage_with_unsloth_required_but_not_installed_fails_clearly(
    stage: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if importlib.util.find_spec("unsloth") is not None:
        pytest.skip("unsloth is importable here")
    monkeypatch.setenv(BACKEND_ENV, "unsloth")
    monkeypatch.setenv("FINETUNE_CACHE", str(tmp_path / "cache"))
    store = LocalStore(tmp_path / "store")
    run_uri = write_run(store, tmp_path)
    if stage == "train":
        from finetune_trainer.train import main
    else:
        from finetune_trainer.benchmark import main
    assert main(run_uri) == EXIT_FAILED
    error = store.get_json(RUN.error)
    assert (error["stage"], error["reason"]) == (stage, "BackendUnavailable")
    assert error["message"] == (
        "FINETUNE_BACKEND=unsloth but unsloth cannot be used: "
        "ModuleNotFoundError: No module named 'unsloth'"
    )
    assert not (tmp_path / "cache").exists()  # failed before any model was converted


def test_importing_unsloth_after_transformers_is_reported(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in backend.PATCHED_BY_UNSLOTH:
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setitem(sys.modules, "trl", sys.modules.get("trl", object()))
    with pytest.raises(ImportError):
        backend.import_unsloth()
    assert "trl imported before unsloth: its patches may not apply" in caplog.text
