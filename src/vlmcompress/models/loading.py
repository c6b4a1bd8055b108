"""Loading a vision-language model and its processor through ``from_pretrained``.

Safetensors only (``use_safetensors=True``); ``trust_remote_code`` stays off unless the
caller sets it.  A local folder and a hub id take the same path; the embedded model is
the folder shipped inside the package, reachable by the name ``embedded``.

Dtypes.  ``dtype="auto"`` (the default) computes on a GPU in the checkpoint's own dtype
(``config.dtype``, the former ``torch_dtype``; float32 when the checkpoint names none) and
on a CPU in float32 (CPU kernels for 16-bit floats are slow or missing).  Whatever the
compute dtype, bytes are reported at the *reference dtype*: the checkpoint's own when it
is float16 or bfloat16, float16 when it says float32 or nothing (see
:mod:`vlmcompress.footprint`); it is recorded on the model.

Placement.  ``device_map="auto"`` (or accelerate's ``balanced``, ``balanced_low_0``,
``sequential``) spreads a model over every visible GPU through ``from_pretrained``
(choose the GPUs with ``CUDA_VISIBLE_DEVICES``); inputs then go to the device of the
input embeddings.  On a CPU run it places everything on the CPU.

Attention.  ``attn_implementation`` (``sdpa`` by default, ``eager``, or
``flash_attention_2`` when the ``flash-attn`` package is installed, on a GPU in 16 bits)
is passed to ``from_pretrained``.  Methods that need attention probabilities compute their
own scores from the queries and keys, so nothing here forces ``eager``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelLoadError
from ..footprint import reference_dtype_for, set_reference_dtype
from .base import ADAPTERS, ModelAdapter

log = logging.getLogger(__name__)

EMBEDDED_NAME = "embedded"
EMBEDDED_PATH = Path(__file__).resolve().parent.parent / "embedded" / "weights"

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DTYPE_CHOICES = ("auto", *_DTYPES)
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


@dataclass
class LoadedModel:
    name: str  # as the user gave it
    model: Any
    processor: Any
    adapter: ModelAdapter
    compute_dtype: torch.dtype = torch.float32  # what the model computes in
    reference_dtype: torch.dtype = torch.float16  # what its bytes are reported at
    checkpoint_dtype: torch.dtype | None = None  # what the checkpoint's config names
    input_device: torch.device | None = None  # where generation inputs go (first device)
    devices: tuple[str, ...] = ()  # every device holding a parameter


def _dtype_name(dtype: torch.dtype | None) -> str:
    return "unknown" if dtype is None else str(dtype).removeprefix("torch.")


def checkpoint_dtype(config) -> torch.dtype | None:
    """The dtype a checkpoint's config names (``dtype``, formerly ``torch_dtype``; the text
    config's when the top level names none)."""
    configs = [config]
    if hasattr(config, "get_text_config"):
        configs.append(config.get_text_config())
    for cfg in configs:
        dt = getattr(cfg, "dtype", None)
        if isinstance(dt, str):
            dt = _DTYPES.get(dt.removeprefix("torch."))
        if isinstance(dt, torch.dtype):
            return dt
    return None


def resolve_dtypes(requested: str, ckpt: torch.dtype | None, device: str) -> tuple[torch.dtype, torch.dtype]:
    """(compute dtype, reference dtype) for ``--dtype requested`` on ``device``."""
    if requested not in DTYPE_CHOICES:
        raise ModelLoadError(f"dtype {requested!r} is not supported; allowed: {', '.join(DTYPE_CHOICES)}")
    if requested == "auto":
        compute = (ckpt or torch.float32) if str(device).startswith("cuda") else torch.float32
    else:
        compute = _DTYPES[requested]
    return compute, reference_dtype_for(ckpt)


def dtype_note(loaded: LoadedModel) -> str:
    """One line saying what the run computes in and what bytes are reported at."""
    return (
        f"{loaded.name}: computing in {_dtype_name(loaded.compute_dtype)} on {loaded.input_device} "
        f"(checkpoint {_dtype_name(loaded.checkpoint_dtype)}); weight and KV bytes reported at {_dtype_name(loaded.reference_dtype)}"
    )


def flash_attention_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def check_attn_implementation(attn: str) -> None:
    """Refuse an unknown attention implementation, or flash_attention_2 without its package."""
    if attn not in ATTN_IMPLEMENTATIONS:
        raise ModelLoadError(f"attn_implementation={attn!r} is not allowed; allowed: {', '.join(ATTN_IMPLEMENTATIONS)}")
    if attn == "flash_attention_2" and not flash_attention_available():
        raise ModelLoadError(
            "attn_implementation=flash_attention_2 needs the flash-attn package, which is not installed "
            "(pip install flash-attn --no-build-isolation); use sdpa or eager"
        )


def _input_device(model) -> torch.device:
    try:
        return model.get_input_embeddings().weight.device
    except (AttributeError, NotImplementedError):
        return next(model.parameters()).device


def resolve_model_path(name: str) -> str:
    if name == EMBEDDED_NAME:
        if not (EMBEDDED_PATH / "config.json").exists():
            raise ModelLoadError(f"the embedded model is missing from {EMBEDDED_PATH}; train it with scripts/train_embedded_model.py")
        return str(EMBEDDED_PATH)
    looks_local = name.startswith((".", "/", "~")) or os.sep in name.strip("/").split("/", 1)[-1] or Path(name).exists()
    if looks_local or name.count("/") > 1:
        path = Path(name).expanduser()
        if not path.exists():
            raise ModelLoadError(f"model path {name!r} does not exist")
        if not (path / "config.json").exists():
            raise ModelLoadError(f"model path {name!r} has no config.json (not a saved transformers model)")
        return str(path)
    return name  # a hub id


def adapter_class_for(model_type: str) -> type[ModelAdapter]:
    for family in ADAPTERS.names():
        cls = ADAPTERS.get(family)
        if model_type in cls.model_types:
            return cls
    known = sorted(t for f in ADAPTERS.names() for t in ADAPTERS.get(f).model_types)
    raise ModelLoadError(f"model type {model_type!r} has no adapter; supported: {', '.join(known)}")


def load_model(
    name: str,
    *,
    dtype: str = "auto",
    device: str = "cpu",
    trust_remote_code: bool = False,
    device_map: str | None = None,
    attn_implementation: str = "sdpa",
) -> LoadedModel:
    """Load model, processor and adapter.  Errors are one-line :class:`ModelLoadError`."""
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    if dtype not in DTYPE_CHOICES:
        raise ModelLoadError(f"dtype {dtype!r} is not supported; allowed: {', '.join(DTYPE_CHOICES)}")
    if device_map is not None and device_map not in DEVICE_MAPS:
        raise ModelLoadError(f"device_map={device_map!r} is not allowed; allowed: {', '.join(DEVICE_MAPS)}")
    check_attn_implementation(attn_implementation)
    on_gpu = str(device).startswith("cuda")
    if attn_implementation == "flash_attention_2" and not on_gpu:
        raise ModelLoadError(f"attn_implementation=flash_attention_2 runs on CUDA GPUs only; this run's device is {device}")
    path = resolve_model_path(name)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"cannot load model {name!r} (no such local folder, and the hub is unreachable or has no such model): {first}") from None
    except ValueError as exc:
        raise ModelLoadError(f"cannot load model {name!r}: {str(exc).splitlines()[0]}") from None
    adapter_cls = adapter_class_for(config.model_type)
    ckpt = checkpoint_dtype(config)
    compute, reference = resolve_dtypes(dtype, ckpt, str(device))
    if attn_implementation == "flash_attention_2" and compute not in (torch.float16, torch.bfloat16):
        raise ModelLoadError(f"attn_implementation=flash_attention_2 needs float16 or bfloat16; this run computes in {_dtype_name(compute)}")
    # On a GPU, load straight onto the device (accelerate's device_map) rather than
    # through a full copy in host memory; device_map="auto" spreads over every visible GPU.
    if on_gpu:
        placement = {"device_map": device_map or device}
    else:
        placement = {}  # a CPU run holds everything on the CPU, device_map or not
    try:
        model = AutoModelForImageTextToText.from_pretrained(
            path, dtype=compute, use_safetensors=True, trust_remote_code=trust_remote_code, attn_implementation=attn_implementation, **placement
        )
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise ModelLoadError(f"cannot load weights of {name!r} (safetensors required): {str(exc).splitlines()[0]}") from None
    except (ValueError, ImportError) as exc:
        if "attn" in str(exc).lower() or "attention" in str(exc).lower():
            raise ModelLoadError(f"cannot load {name!r} with attn_implementation={attn_implementation}: {str(exc).strip().splitlines()[0]}") from None
        raise
    if not getattr(model, "hf_device_map", None) or len(set(model.hf_device_map.values())) <= 1:
        model.to(device)  # a model spread over several devices stays where accelerate put it
    model.eval()
    set_reference_dtype(model, reference)
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    devices = tuple(dict.fromkeys(str(p.device) for p in model.parameters()))
    loaded = LoadedModel(name, model, processor, adapter_cls(model, processor), compute, reference, ckpt, _input_device(model), devices)
    log.info(dtype_note(loaded))
    return loaded
