"""Attention masks for a decoder whose layers hold different, per-row numbers of entries.

The mask transformers builds once from generate's 2-D mask no longer matches a layer
once tokens are dropped or evicted, so each layer gets its own: at prefill over the
shortened sequence, during decoding over the kept prompt slots plus the generated ones.
"""

from __future__ import annotations

import torch

SUPPORTED_ATTENTION = ("sdpa", "eager")


def prefill_mask(valid: torch.Tensor, impl: str, dtype: torch.dtype) -> torch.Tensor:
    """Causal mask in slot order (slots are sorted by original position) over real keys;
    a pad slot may see itself only, so no softmax row is empty."""
    B, S = valid.shape
    idx = torch.arange(S, device=valid.device)
    causal = idx[None, :] <= idx[:, None]
    allowed = causal[None] & valid[:, None, :]
    allowed = allowed | torch.eye(S, dtype=torch.bool, device=valid.device)[None]
    return as_mask(allowed[:, None], impl, dtype)


def decode_mask(valid: torch.Tensor, appended: int, q_len: int, impl: str, dtype: torch.dtype) -> torch.Tensor:
    """Mask of ``q_len`` new queries over a layer holding ``valid`` prompt slots followed
    by ``appended`` earlier generated entries and the new ones (causal among those)."""
    B, N = valid.shape
    kv = N + appended + q_len
    keys = torch.arange(kv, device=valid.device)
    queries = torch.arange(q_len, device=valid.device) + N + appended
    allowed = (keys[None, :] <= queries[:, None])[None].expand(B, -1, -1).clone()
    allowed[:, :, :N] &= valid[:, None, :]
    return as_mask(allowed[:, None], impl, dtype)


def as_mask(allowed: torch.Tensor, impl: str, dtype: torch.dtype) -> torch.Tensor:
    """A boolean ``allowed`` mask in the form the attention implementation reads (sdpa:
    boolean; eager: additive, ``finfo.min`` where not allowed)."""
    if impl == "sdpa":
        return allowed
    out = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return out.masked_fill(~allowed, torch.finfo(dtype).min)
