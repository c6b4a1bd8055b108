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
    return _chunked_attention(q, k, None, scaling, chunk, causal)[1]


def attention_with_column_sums(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention output ``[H_q, L, D_v]`` (float32) and the column sums of
    :func:`attention_column_sums` from the same probabilities, bit for bit: the prefill's
    attention and H2O's scoring in one pass (``layout.fused``)."""
    return _chunked_attention(q, k, v, scaling, chunk, True)


def _chunked_attention(q, k, v, scaling: float, chunk: int, causal: bool) -> tuple[torch.Tensor | None, torch.Tensor]:
    """One query head and ``chunk`` queries at a time, into one reused buffer of
    ``chunk x L`` floats: on a CPU the blocks of a whole GQA group (``H x chunk x L``) fall
    out of the caches, and each operator's pass over them costs more than its arithmetic.
    The normalisation is applied to the column sums (``p^T (1 / z)``, one matrix-vector
    product) and to the output rows, never to the probabilities themselves."""
    h_q, L, _ = q.shape
    group = h_q // k.shape[0]
    qs = q.float() * scaling
    kt = k.float().transpose(1, 2).contiguous()  # [H_kv, D, L]
    vf = None if v is None else v.float()
    out = None if v is None else torch.empty(h_q, L, v.shape[-1], dtype=torch.float32, device=q.device)
    total = torch.zeros(h_q, L, dtype=torch.float32, device=q.device)
    n_max = min(chunk, L)
    buf = torch.empty(n_max * L, dtype=torch.float32, device=q.device)
    future = torch.ones(n_max, n_max, dtype=torch.bool, device=q.device).triu_(1)
    for h in range(h_q):
        kv = h // group
        for start in range(0, L, chunk):
            stop = min(L, start + chunk)
            n = stop - start
            width = stop if causal else L  # causal: the keys after the chunk get exactly zero
            p = buf[: n * width].view(n, width)
            torch.mm(qs[h, start:stop], kt[kv, :, :width], out=p)
            if causal:  # only the chunk's own diagonal block has future keys
                p[:, start:stop].masked_fill_(future[:n, :n], float("-inf"))
            p.sub_(p.amax(-1, keepdim=True)).exp_()
            inv = p.sum(-1).reciprocal_()
            total[h, :width].addmv_(p.t(), inv)
            if out is not None:
                torch.mm(p, vf[kv, :width], out=out[h, start:stop]).mul_(inv[:, None])
    return out, total
