"""The merged model for serving (`promotion.export: [adapter, merged]`): the base model with
the run's adapter merged into its weights, saved as safetensors in the Hugging Face layout
(config.json, model*.safetensors, the tokenizer and chat template) to the run's merged/,
from where promotion copies it beside the adapter.

The base is loaded with transformers alone and never in 4-bit, whatever model.loadIn4bit
says: merging into quantized weights would round the adapter away, and a server loads the
result as an ordinary checkpoint. The weights are in the spec's precision on a GPU (bf16 by
default) and fp32 on a CPU, as the trainer computes there. Shards stay under 4 GB, so that
promotion can copy each one within the store in a single request.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from finetune_core.api import ResolvedSpec
from finetune_core.layout import RunPaths
from finetune_core.store import ArtifactStore
from finetune_trainer.backend import compute_dtype, device_name, dtype_name
from finetune_trainer.modeling import (
    adapter_tokenizer,
    local_model_path,
    transformers_load_options,
    with_pad_token,
)

log = logging.getLogger(__name__)

# Shards below S3's 5 GiB limit on a single-request copy: promotion copies the merged model
# object by object inside the store (transformers' own default is 50GB).
MAX_SHARD_SIZE = "4GB"


def release_accelerator_memory() -> None:
    """Free what the benchmark's own model left cached on the GPU before loading another."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def merged_model(spec: ResolvedSpec, adapter_dir: Path) -> tuple[Any, Any]:
    """(model, tokenizer): the full-precision base with the adapter merged in."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = local_model_path(spec.model_id)
    dtype = compute_dtype(spec.precision)
    options = transformers_load_options(False, dtype, device_name(), quantizable=False)
    base = AutoModelForCausalLM.from_pretrained(path, **options)
    model = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    model.eval()
    tokenizer = adapter_tokenizer(adapter_dir, None)
    if tokenizer is None:
        tokenizer = with_pad_token(AutoTokenizer.from_pretrained(path))
    log.info("merged the adapter into %s (%s)", spec.model_id, dtype_name(dtype))
    return model, tokenizer


def save_merged(spec: ResolvedSpec, adapter_dir: Path, target: Path) -> Path:
    """The merged model written to `target` in the Hugging Face layout."""
    release_accelerator_memory()
    model, tokenizer = merged_model(spec, adapter_dir)
    model.save_pretrained(str(target), safe_serialization=True, max_shard_size=MAX_SHARD_SIZE)
    tokenizer.save_pretrained(str(target))
    return target


def export_merged(
    store: ArtifactStore, run: RunPaths, spec: ResolvedSpec, adapter_dir: Path, workdir: Path
) -> str:
    """Write the merged model and upload it to the run's merged/; returns its URI."""
    target = save_merged(spec, adapter_dir, workdir / "merged")
    store.delete_prefix(run.merged + "/")  # a retry's copy replaces, never mixes with, the last
    store.upload_dir(run.merged, target)
    uri = store.uri(run.merged)
    log.info("merged model uploaded to %s", uri)
    return uri
