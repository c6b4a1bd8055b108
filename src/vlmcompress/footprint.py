"""Bytes held by model weights and by a KV cache, counted from the tensors themselves.

This is the ground floor: methods, the evaluation loop and the reports all count bytes
here.  Two written interfaces say who knows what about a KV cache's footprint:

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


def tensor_bytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


def model_weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of every parameter and buffer the model holds (each storage counted once,
    so tied embeddings are not counted twice)."""
    seen: set[int] = set()
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        key = t.untyped_storage().data_ptr() if t.device.type != "meta" else id(t)
        if key in seen:
            continue
        seen.add(key)
        total += tensor_bytes(t)
    return total


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


def kv_footprint(cache, prompt_entries: list[list[float]], decode_entries: list[int]) -> list[dict[str, float]]:
    """KV bytes each sample of a batch holds at its own end of generation.

    ``prompt_entries[i][l]``: prompt entries sample ``i`` holds in layer ``l`` (its real
    prompt length, unless eviction or token dropping changed it; a mean over KV heads when
    heads keep different numbers); ``decode_entries[i]``: its generated entries (all its
    generated tokens but the last, which is never fed back).  A per-sample cache counts
    itself; for a plain cache each layer's per-token cost (keys and values, every KV head,
    at the stored dtype) times the entries it holds, padding not counted.
    """
    if isinstance(cache, PerSampleKVCache):
        return cache.footprint(decode_entries)
    per_token = []
    for layer in cache.layers:
        keys, values = layer.keys, layer.values
        if not isinstance(keys, torch.Tensor) or keys.numel() == 0:
            per_token.append(0)
            continue
        per_token.append(keys.shape[1] * keys.shape[3] * keys.element_size() + values.shape[1] * values.shape[3] * values.element_size())
    out = []
    for held, decoded in zip(prompt_entries, decode_entries):
        total = sum(cost * (n + decoded) for cost, n in zip(per_token, held))
        out.append({"kv_bytes": int(round(total))})
    return out
