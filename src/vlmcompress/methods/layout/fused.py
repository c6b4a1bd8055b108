"""H2O-style scoring fused into the prefill's own attention.

Methods that rank keys by the attention they receive from EVERY prompt query (H2O,
observed attention) would otherwise score each layer twice: transformers' SDPA computes
the attention and throws the probabilities away, then the scorer recomputes ``QK^T`` and
the softmax for the column sums, which at 8k tokens costs more than the whole prefill.

Here the prefill's attention itself is computed in query chunks (``layout.attention.
attention_with_column_sums``) and hands the column sums to the scorer: one pass, the
same sums bit for bit as the separate scoring.  It is an attention function registered
with transformers' ``AttentionInterface`` (and the SDPA mask under the same name with
``AttentionMaskInterface``), switched on for the text model only during a prefill that
asks for it (``SequenceLayout``); every other call, and every module without a pending
request, goes straight to transformers' own ``sdpa_attention_forward``.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Callable

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .attention import attention_with_column_sums

FUSED_ATTENTION = "vlmcompress_sdpa_column_sums"


@dataclass
class ColumnSumRequest:
    """What one attention call at prefill must also produce."""

    chunk: int  # queries per chunk (memory ~ heads x chunk x prompt)
    lengths: list[int]  # real tokens of each row, a suffix of its slots (left padding)
    on_sums: Callable[[list[torch.Tensor]], None]  # gets each row's [H_q, L] column sums, once


_REQUESTS: "weakref.WeakKeyDictionary[torch.nn.Module, ColumnSumRequest]" = weakref.WeakKeyDictionary()


def request_column_sums(module: torch.nn.Module, request: ColumnSumRequest) -> None:
    """The next call of ``module``'s attention function computes ``request``'s sums."""
    _REQUESTS[module] = request


def sdpa_with_column_sums(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None, **kwargs):
    """transformers' attention-function signature: ``query [B, H_q, S, D]``, ``key``/``value``
    ``[B, H_kv, S, D]``; returns ``([B, S, H_q, D], None)`` as ``sdpa_attention_forward`` does.

    With a pending request each row's real tokens attend causally among themselves (the
    layout's masks say the same: pad slots are never seen), pad slots get zeros, and the
    output is computed in float32 from the same probabilities as the sums."""
    request = _REQUESTS.pop(module, None)
    if request is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    B, _, S, _ = query.shape
    if key.shape[2] != S:
        raise RuntimeError(f"column sums are computed at prefill only: {S} queries against {key.shape[2]} keys")
    scale = float(query.shape[-1] ** -0.5 if scaling is None else scaling)
    out = query.new_zeros(B, query.shape[1], S, value.shape[-1])
    sums = []
    for r, L in enumerate(request.lengths):
        o, s = attention_with_column_sums(query[r, :, S - L :], key[r, :, S - L :], value[r, :, S - L :], scale, request.chunk)
        out[r, :, S - L :] = o.to(out.dtype)
        sums.append(s)
    request.on_sums(sums)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(FUSED_ATTENTION, sdpa_with_column_sums)
AttentionMaskInterface.register(FUSED_ATTENTION, sdpa_mask)
