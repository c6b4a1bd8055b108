"""Pure attention-score math shared by KV-cache eviction and visual-token pruning, on the
tensors of ONE sample (padding already removed).

Keys ``k`` are ``[H_kv, L, D]`` (rotary applied, as the cache stores them), queries
``q`` are ``[H_q, n, D]`` (rotary applied).  Nothing here materialises an ``L x L``
attention matrix for a whole prompt: window scores need ``n x L``, and column sums over
every query are accumulated ``chunk`` queries at a time.
"""

from __future__ import annotations

import torch


def group_mean(scores: torch.Tensor, n_kv_heads: int) -> torch.Tensor:
    """``[H_q, ...]`` -> ``[H_kv, ...]``: average the query heads sharing one KV head (GQA),
    so a KV head keeps what its whole group attends to (kvpress, SnapKV issue #22)."""
    h_q = scores.shape[0]
    return scores.reshape(n_kv_heads, h_q // n_kv_heads, *scores.shape[1:]).mean(1)


def expand_kv(k: torch.Tensor, h_q: int) -> torch.Tensor:
    """Repeat each KV head for the query heads of its GQA group."""
    return k.repeat_interleave(h_q // k.shape[0], dim=0)


def window_attention(q: torch.Tensor, k: torch.Tensor, scaling: float) -> torch.Tensor:
    """Softmax attention of the LAST ``n`` queries of a prompt over all ``L`` keys,
    causal: query ``i`` sits at position ``L - n + i``.  ``[H_q, n, L]`` in float32."""
    h_q, n, _ = q.shape
    L = k.shape[1]
    logits = torch.matmul(q.float(), expand_kv(k, h_q).float().transpose(1, 2)) * scaling
    q_pos = torch.arange(L - n, L, device=q.device)[:, None]
    future = torch.arange(L, device=q.device)[None, :] > q_pos
    return logits.masked_fill(future, float("-inf")).softmax(-1)


def attention_column_sums(q: torch.Tensor, k: torch.Tensor, scaling: float, chunk: int = 256, causal: bool = True) -> torch.Tensor:
    """Attention every key receives, summed over ALL queries of the prompt (causal, or
    bidirectional as in a vision encoder): ``[H_q, L]``.  Queries are processed ``chunk``
    at a time, so memory is ``O(H * chunk * L)`` instead of ``O(H * L^2)``.

    Causal: a chunk of queries ending at position ``stop`` is scored against the keys up to
    ``stop`` only (the later ones would get exactly zero), and only the chunk's own diagonal
    block is masked, in place: about half the work of scoring every chunk against all ``L``
    keys (H2O at 8k tokens spends most of its prefill here)."""
    h_q, L, _ = q.shape
    ke = expand_kv(k, h_q).float().transpose(1, 2)
    total = torch.zeros(h_q, L, dtype=torch.float32, device=q.device)
    for start in range(0, L, chunk):
        stop = min(L, start + chunk)
        keys = ke[:, :, :stop] if causal else ke
        logits = torch.matmul(q[:, start:stop].float(), keys)
        logits.mul_(scaling)
        if causal:
            rows = torch.arange(start, stop, device=q.device)[:, None]
            future = torch.arange(start, stop, device=q.device)[None, :] > rows
            logits[:, :, start:stop].masked_fill_(future, float("-inf"))
        total[:, : keys.shape[-1]] += logits.softmax(-1).sum(1)
    return total
