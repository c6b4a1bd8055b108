"""Writing only the kept entries of a layer into the real cache at the end of prefill.

For ONE attention call at prefill, the attention module is handed a thin proxy of the
cache: the proxy's ``update`` receives the full post-rotary keys and values, asks the
evicting participant which slots to keep, writes only those into the real cache
(through the ordinary ``Cache.update``, so a quantized cache quantizes only what is
kept, once) and returns the full keys and values, so the prefill itself stays exact
(the kvpress semantics: compress at the end of prefill).
"""

from __future__ import annotations

from typing import Callable

import torch

from ...footprint import tell_leading_padding
from .state import BatchLayout

# (real cache, keys, values, layer_idx, update args, update kwargs) -> (keys, values) for attention
UpdateFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]


class PrefillCacheProxy:
    """Stands in for the real cache during ONE attention call at prefill."""

    def __init__(self, cache, on_update: UpdateFn):
        self._cache = cache
        self._on_update = on_update

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        return self._on_update(self._cache, key_states, value_states, layer_idx, args, kwargs)

    def __getattr__(self, name):
        return getattr(self._cache, name)


def write_kept(real, layout: BatchLayout, layer_idx: int, chosen, keys, values, u_args, u_kwargs) -> None:
    """Store a participant's choice in ``real``.  ``chosen`` is ``(index [B,H,N], valid [B,N])``
    (slots of the current sequence to keep) or, for merging methods, ``(index, valid,
    keys_to_store, values_to_store)``."""
    if len(chosen) == 2:
        index, valid = chosen
        k_keep = keys.gather(2, index[..., None].expand(-1, -1, -1, keys.shape[-1]))
        v_keep = values.gather(2, index[..., None].expand(-1, -1, -1, values.shape[-1]))
    else:
        index, valid, k_keep, v_keep = chosen
    tell_leading_padding(real, layer_idx, valid)
    real.update(k_keep.contiguous(), v_keep.contiguous(), layer_idx, *u_args, **u_kwargs)
    layout.record_kept(layer_idx, index, valid)
