"""Bytes held by model weights and by a KV cache, counted from the tensors themselves.

This is the ground floor: methods, the evaluation loop and the reports all count bytes
here.

Reference dtype.  Bytes are reported as a GPU user holds them: every floating-point
weight and plain-cache entry at the *reference dtype* — the checkpoint's own 16-bit dtype
(``float16`` or ``bfloat16``), or ``float16`` when the checkpoint says ``float32`` or
nothing (16 bits is how such models are served) — whatever dtype the run computes in.
On a CPU a run computes in float32, and counting those tensors as held would make every
saving look twice as large ("4-bit is 4x smaller" must hold as a GPU user sees it).
Integer storages (packed codes, indices) and 16-bit ones (scales, zeros, outliers, the
quantized cache's residual) are counted exactly as held.  :func:`held_weight_bytes`
keeps the bytes the process really holds.  The loader records the reference dtype on
the model (:func:`set_reference_dtype`); a model built by hand gets its own dtype when
that is a 16-bit one, float16 otherwise.

Two written interfaces say who knows what about a KV cache's footprint:

* :class:`PerSampleKVCache` — a cache that stores each sample of a batch on its own and
  counts its own bytes (the quantized cache).  Anything that writes into it may tell it
  how many leading slots of each row are not real tokens (left padding, or the spare
  slots of a row that kept fewer entries than the widest row).
* a method's :meth:`~vlmcompress.methods.base.CompressionMethod.prompt_entries_held`
  — how many prompt entries each layer of each sample holds when eviction or token
  dropping changed it (the layout of ``methods/layout``).

:func:`kv_footprint` is the one place that turns these into per-sample KV bytes.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


REFERENCE_DTYPES = (torch.float16, torch.bfloat16)
_REFERENCE_ATTR = "_vlmcompress_reference_dtype"


def tensor_bytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


def dtype_bytes(dtype: torch.dtype) -> int:
    """Bytes of one element of ``dtype``."""
    return torch.empty((), dtype=dtype).element_size()


def reference_dtype_for(checkpoint_dtype: torch.dtype | None) -> torch.dtype:
    """The dtype bytes are reported at for a checkpoint stored in ``checkpoint_dtype``:
    its own when 16-bit, float16 otherwise (float32 or unknown)."""
    return checkpoint_dtype if checkpoint_dtype in REFERENCE_DTYPES else torch.float16


def set_reference_dtype(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Record on ``model`` the dtype its bytes are reported at (the loader calls this)."""
    if dtype not in REFERENCE_DTYPES:
        raise ValueError(f"a reference dtype is float16 or bfloat16, got {dtype}")
    object.__setattr__(model, _REFERENCE_ATTR, dtype)


def _first_float_dtype(model: torch.nn.Module) -> torch.dtype | None:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return None


def reference_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype ``model``'s weight and plain-cache bytes are reported at."""
    recorded = model.__dict__.get(_REFERENCE_ATTR)
    if recorded is not None:
        return recorded
    return reference_dtype_for(_first_float_dtype(model))


def _unique(tensors) -> list[torch.Tensor]:
    """Each storage once (tied embeddings are not counted twice)."""
    seen: set[int] = set()
    out = []
    for t in tensors:
        key = t.untyped_storage().data_ptr() if t.device.type != "meta" else id(t)
        if key in seen:
            continue
        seen.add(key)
        out.append(t)
    return out


def _stored_tensors(model: torch.nn.Module) -> list[torch.Tensor]:
    """Parameters and persistent buffers: what a checkpoint of the model stores (rotary
    frequency tables and position-id ranges, rebuilt at load, are not weights)."""
    tensors = list(model.parameters())
    for module in model.modules():
        skip = module._non_persistent_buffers_set
        tensors += [b for name, b in module._buffers.items() if b is not None and name not in skip]
    return _unique(tensors)


def model_weight_bytes(model: torch.nn.Module, dtype: torch.dtype | None = None) -> int:
    """Weight bytes as reported: every parameter and persistent buffer, each storage once,
    floating-point ones at the reference dtype's element size (``dtype``, default
    :func:`reference_dtype`), integer ones (packed codes, indices) as held."""
    ref = dtype_bytes(dtype or reference_dtype(model))
    return sum(t.numel() * ref if t.is_floating_point() else tensor_bytes(t) for t in _stored_tensors(model))


def held_weight_bytes(model: torch.nn.Module) -> int:
    """Bytes the process really holds for the model: every parameter and buffer (persistent
    or not) at its own dtype, each storage once."""
    return sum(tensor_bytes(t) for t in _unique(list(model.parameters()) + list(model.buffers())))


@runtime_checkable
class PerSampleKVCache(Protocol):
    """A KV cache that stores each sample on its own and measures its own bytes."""

    def set_leading_padding(self, layer_idx: int, pad_lengths: list[int]) -> None:
        """Leading slots of each row, in the first states ``layer_idx`` will receive, that are
        not real tokens: never stored, never counted."""

    def footprint(self, decode_entries: list[int]) -> list[dict[str, float]]:
        """Per sample, once it held its prompt and ``decode_entries[i]`` generated entries:
        ``kv_bytes`` (measured), ``kv_bytes_analytic``, ``kv_bytes_fp16`` and ``kv_tokens``."""


def tell_leading_padding(cache, layer_idx: int, valid: torch.Tensor) -> None:
    """Tell a :class:`PerSampleKVCache` which leading slots of each row of the states about
    to be written to ``layer_idx`` are not real (``valid`` ``[B, N]`` is False exactly on a
    prefix of each row).  A cache that stores the batch as one tensor needs no telling."""
    if isinstance(cache, PerSampleKVCache):
        cache.set_leading_padding(layer_idx, (~valid).sum(-1).tolist())


def kv_footprint(cache, prompt_entries: list[list[float]], decode_entries: list[int], element_size: int | None = None) -> list[dict[str, float]]:
    """KV bytes each sample of a batch holds at its own end of generation.

    ``prompt_entries[i][l]``: prompt entries sample ``i`` holds in layer ``l`` (its real
    prompt length, unless eviction or token dropping changed it; a mean over KV heads when
    heads keep different numbers); ``decode_entries[i]``: its generated entries (all its
    generated tokens but the last, which is never fed back).  A per-sample cache counts
    itself; for a plain cache each layer's per-token cost (keys and values, every KV head,
    at ``element_size`` bytes an element — the reference dtype's, see the module doc — or
    at the stored dtype when None) times the entries it holds, padding not counted.
    """
    if isinstance(cache, PerSampleKVCache):
        return cache.footprint(decode_entries)
    per_token = []
    for layer in cache.layers:
        keys, values = layer.keys, layer.values
        if not isinstance(keys, torch.Tensor) or keys.numel() == 0:
            per_token.append(0)
            continue
        k_size = element_size or keys.element_size()
        v_size = element_size or values.element_size()
        per_token.append(keys.shape[1] * keys.shape[3] * k_size + values.shape[1] * values.shape[3] * v_size)
    out = []
    for held, decoded in zip(prompt_entries, decode_entries):
        total = sum(cost * (n + decoded) for cost, n in zip(per_token, held))
        out.append({"kv_bytes": int(round(total))})
    return out
