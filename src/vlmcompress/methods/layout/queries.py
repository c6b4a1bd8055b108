"""Queries and attention scaling exactly as a decoder's attention module computes them,
for the methods that score tokens (the model's own rotary function comes from its adapter)."""

from __future__ import annotations

from typing import Callable

import torch


def compute_queries(attn: torch.nn.Module, hidden: torch.Tensor, position_embeddings, tail: int, rotary: Callable) -> torch.Tensor:
    """Queries ``[B, H_q, tail, D]`` of the last ``tail`` slots: the module's projection,
    its q-norm when it has one (Qwen3-style), and ``rotary`` (the model's own
    ``apply_rotary_pos_emb``; Qwen2-VL's folds the 3-D M-RoPE sections into cos/sin)."""
    h = hidden[:, -tail:]
    head_dim = attn.head_dim
    q = attn.q_proj(h).view(*h.shape[:-1], -1, head_dim)
    q_norm = getattr(attn, "q_norm", None)
    if q_norm is not None:
        q = q_norm(q)
    q = q.transpose(1, 2)
    cos, sin = position_embeddings
    cos, sin = cos[..., -tail:, :], sin[..., -tail:, :]
    q, _ = rotary(q, q[:, :1], cos, sin)
    return q


def attention_scaling(attn: torch.nn.Module) -> float:
    """The softmax scale the module applies (``scaling``, else ``head_dim ** -0.5``)."""
    scaling = getattr(attn, "scaling", None)
    return float(attn.head_dim**-0.5 if scaling is None else scaling)
