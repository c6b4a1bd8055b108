"""Pure budget, scoring and selection math of KV-cache eviction, on the tensors of ONE sample.

Every function here works on one row of a batch with its padding already removed:
keys ``k`` are ``[H_kv, L, D]`` (rotary already applied, as the cache stores them),
queries ``q`` are ``[H_q, n, D]`` (rotary applied), ``L`` is the sample's real prompt
length.  Working per row is what makes a sample keep exactly the same entries alone
and inside a padded batch (the layout slices each row's real tokens out first).  The attention pieces shared
with visual-token pruning live in :mod:`..layout.attention`.

Selections are returned as ``[H_kv, n_keep]`` int64 tensors of token positions
(0-based within the real prompt), sorted ascending per head.  Ties between equal
scores are broken towards the earlier position (stable sort), so a selection is
deterministic.  Nothing here materialises an ``L x L`` attention matrix: window
scores need ``n_window x L``, and whole-prompt column sums (H2O) are accumulated over
query chunks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..layout.attention import attention_column_sums, group_mean, window_attention
from ..ranking import stable_top_k

# ----------------------------------------------------------------------------- budgets


def kv_budget(length: int, ratio: float) -> int:
    """Entries a sample of ``length`` real tokens keeps at ``ratio`` (at least one).

    The small epsilon keeps e.g. ``0.29 * 100`` (= 28.999...) from flooring to 28."""
    return max(1, min(length, math.floor(length * ratio + 1e-9)))


def recent_window(budget: int, window: int = 0) -> int:
    """Recent tokens always kept: ``window`` when given (capped at the budget), else the
    design's default ``max(1, int(0.1 * budget))``."""
    if window > 0:
        return min(window, budget)
    return max(1, int(0.1 * budget))


PYRAMID_RULES = ("kvcache_factory", "kvpress", "linear")


def pyramid_budgets(length: int, budget: int, window: int, n_layers: int, beta: float, rule: str = "kvcache_factory") -> list[int]:
    """PyramidKV's per-layer budgets (entries kept per layer, window included); ``budget``
    is the uniform budget ``B`` and ``window`` the recent window ``w``.

    ``rule="kvcache_factory"`` (PyramidKV's authors' code, KVCache-Factory, and EffiVLM-Bench):
    the pyramid is built on the selected part ``B - w``: ``min = (B - w) // beta``,
    ``max = 2 (B - w) - min`` (``max`` capped at ``L - w``, ``min`` raised to keep the
    sum), layer ``i`` keeps ``w + max - i * ((max - min) // (layers - 1))`` (integer
    steps, so the mean over layers can exceed ``B`` by less than ``(layers - 1) / 2``).
    A prompt shorter than ``2 (B - w)`` (or one layer, or ``B <= w``) gets the uniform
    budget on every layer.

    ``rule="kvpress"`` (kvpress's ``PyramidKVPress``): the pyramid is built on the total
    budget, window included: ``min = B / beta``, ``max = 2 B - min`` (``max`` capped at
    ``L - w``), layer ``i`` keeps ``round(max - i * (max - min) / (layers - 1))``; the
    uniform budget when not ``L >= max >= min >= w`` (so whenever ``B / beta < w``).

    ``rule="linear"`` (this package's earlier rule): the kvcache_factory formula with
    real-valued steps, applied whenever it fits (no short-prompt fallback); uniform only
    when no pyramid fits.
    """
    if rule not in PYRAMID_RULES:
        raise ValueError(f"pyramid rule {rule!r} is not one of {PYRAMID_RULES}")
    uniform = [budget] * n_layers
    if rule == "kvpress":
        lo = budget / beta
        hi = 2 * budget - lo
        if hi >= length - window:
            hi = length - window
            lo = 2 * budget - hi
        if n_layers < 2 or not (length >= hi >= lo >= window):
            return uniform
        step = (hi - lo) / (n_layers - 1)
        return [max(1, round(hi - i * step)) for i in range(n_layers)]
    sel = budget - window
    if rule == "kvcache_factory":
        if n_layers < 2 or sel <= 0 or length < 2 * sel:
            return uniform
        lo = int(sel // beta)
        hi = 2 * sel - lo
        if hi >= length - window:
            hi = length - window
            lo = 2 * sel - hi
        step = (hi - lo) // (n_layers - 1)
        return [window + hi - i * step for i in range(n_layers)]
    lo = sel / beta
    hi = 2 * sel - lo
    if hi > length - window:
        hi = length - window
        lo = 2 * sel - hi
    if n_layers < 2 or not (length - window >= hi >= lo >= 0) or sel <= 0:
        return uniform
    step = (hi - lo) / (n_layers - 1)
    return [min(length, window + max(0, round(hi - i * step))) for i in range(n_layers)]


# ----------------------------------------------------------------------------- selection


def top_with_window(scores: torch.Tensor, budget: int, window: int) -> torch.Tensor:
    """Keep the last ``window`` positions plus the ``budget - window`` best-scored of the
    others, per head.  ``scores``: ``[H, L]`` (only ``[:, :L - window]`` is read)."""
    h, L = scores.shape
    budget = min(budget, L)
    window = min(window, budget)
    recent = torch.arange(L - window, L, device=scores.device).expand(h, window)
    n_top = budget - window
    if n_top == 0:
        return recent.clone()
    prefix = scores[:, : L - window]
    order = stable_top_k(prefix, n_top)
    return torch.cat([order, recent], dim=-1).sort(-1).values


def streamingllm_select(length: int, budget: int, sink: int, n_heads: int, device=None) -> torch.Tensor:
    """StreamingLLM: the first ``sink`` tokens (attention sinks) and the most recent rest.
    EffiVLM-Bench's split is ``sink = budget - window`` (the first ``B - w`` and the last ``w``)."""
    budget = min(budget, length)
    sink = min(sink, budget)
    keep = torch.cat([torch.arange(sink, device=device), torch.arange(length - (budget - sink), length, device=device)])
    return keep.expand(n_heads, -1).clone()


def snapkv_select(q_win, k, scaling, budget, window, kernel=5, pooling="avg") -> torch.Tensor:
    """SnapKV: score the prefix with the last ``window`` queries and keep the window.
    The prefix is scored without the window's columns, as in the paper's code and kvpress
    (pooling then sees the prefix only)."""
    L = k.shape[1]
    window = min(window, budget, L)
    attn = window_attention(q_win, k, scaling)[:, :, : L - window].mean(1)
    if kernel > 1 and attn.shape[-1] > 0:
        pool = F.avg_pool1d if pooling == "avg" else F.max_pool1d
        attn = pool(attn[:, None], kernel_size=kernel, padding=kernel // 2, stride=1)[:, 0]
    scores = group_mean(attn, k.shape[0])
    scores = F.pad(scores, (0, window))
    return top_with_window(scores, budget, window)


def h2o_select(q_all, k, scaling, budget, window, per_head=True, chunk=256) -> torch.Tensor:
    """H2O: heavy hitters by accumulated attention over the whole prompt + recent window."""
    return h2o_keep(attention_column_sums(q_all, k, scaling, chunk), k.shape[0], budget, window, per_head)


def h2o_keep(column_sums: torch.Tensor, n_kv_heads: int, budget: int, window: int, per_head: bool = True) -> torch.Tensor:
    """H2O's selection from the query heads' column sums ``[H_q, L]``."""
    sums = group_mean(column_sums, n_kv_heads)
    if not per_head:
        sums = sums.mean(0, keepdim=True).expand_as(sums)
    return top_with_window(sums, budget, window)


def random_select(length: int, budget: int, window: int, n_heads: int, generator: torch.Generator) -> torch.Tensor:
    """Random baseline: ``budget - window`` uniformly drawn older tokens + the window,
    one draw for all heads (the draw comes from a seeded CPU generator)."""
    budget = min(budget, length)
    window = min(window, budget)
    perm = torch.randperm(length - window, generator=generator)[: budget - window]
    keep = torch.cat([perm, torch.arange(length - window, length)]).sort().values
    return keep.expand(n_heads, -1).clone()


def knorm_select(k: torch.Tensor, budget: int) -> torch.Tensor:
    """Knorm (kvpress's ``KnormPress``, Devoto et al. 2024): per KV head, keep the
    ``budget`` keys with the LOWEST L2 norm (no window is protected)."""
    return top_with_window(-k.float().norm(dim=-1), budget, 0)


def keydiff_select(k: torch.Tensor, budget: int) -> torch.Tensor:
    """KeyDiff (kvpress's ``KeyDiffPress``): per KV head, keep the ``budget`` keys least
    similar (cosine) to the anchor, the mean of the head's L2-normalised keys."""
    kf = k.float()
    anchor = F.normalize(kf, dim=-1).mean(1, keepdim=True)
    return top_with_window(-F.cosine_similarity(kf, anchor, dim=-1), budget, 0)


def tova_select(q_last: torch.Tensor, k: torch.Tensor, scaling: float, budget: int) -> torch.Tensor:
    """TOVA (kvpress's ``TOVAPress``): the last prompt token's attention, averaged over
    ALL query heads (one ranking shared by every KV head), picks ``budget - 1`` earlier
    tokens; the last token is always kept.  ``q_last``: ``[H_q, 1, D]``."""
    L = k.shape[1]
    scores = window_attention(q_last[:, -1:], k, scaling)[:, 0].mean(0)  # [L]
    return top_with_window(scores.expand(k.shape[0], L), budget, 1)


def observed_attention_select(q_all: torch.Tensor, k: torch.Tensor, scaling: float, budget: int, chunk: int = 256) -> torch.Tensor:
    """Observed attention (kvpress's ``ObservedAttentionPress``): the attention a key
    receives summed over every query that sees it, divided by how many do (``L - j``
    for key ``j``), averaged over the query heads of each KV head; no window."""
    return observed_attention_keep(attention_column_sums(q_all, k, scaling, chunk), k.shape[0], budget)


def observed_attention_keep(column_sums: torch.Tensor, n_kv_heads: int, budget: int) -> torch.Tensor:
    """Observed attention's selection from the query heads' column sums ``[H_q, L]``."""
    L = column_sums.shape[1]
    seen_by = torch.arange(L, 0, -1, device=column_sums.device, dtype=column_sums.dtype)
    return top_with_window(group_mean(column_sums / seen_by, n_kv_heads), budget, 0)


# ----------------------------------------------------------------------------- VL-Cache


def vlcache_scores(q_post: torch.Tensor, k: torch.Tensor, scaling: float) -> tuple[torch.Tensor, float]:
    """VL-Cache: accumulated *post-vision* attention per KV head ``[H_kv, L]`` and the
    layer's attention sparsity (share of post-vision attention entries, among the causally
    visible ones, below 1% of their row's maximum)."""
    attn = window_attention(q_post, k, scaling)  # [H_q, n, L], future entries are 0
    n = q_post.shape[1]
    L = k.shape[1]
    visible = torch.arange(L, device=k.device)[None, :] <= torch.arange(L - n, L, device=k.device)[:, None]
    row_max = attn.amax(-1, keepdim=True)
    small = (attn < 0.01 * row_max) & visible
    sparsity = float(small.sum()) / float(visible.sum() * attn.shape[0])
    return group_mean(attn.sum(1), k.shape[0]), sparsity


def vlcache_budgets(sparsities: list[float], budget: int, length: int) -> list[int]:
    """Per-layer budgets proportional to ``1 - sparsity``, summing to ``budget * layers``
    (each capped at the prompt length, the surplus handed to the other layers)."""
    n = len(sparsities)
    dense = torch.tensor([max(1e-6, 1.0 - s) for s in sparsities], dtype=torch.float64)
    total = budget * n
    alloc = torch.zeros(n, dtype=torch.float64)
    free = torch.ones(n, dtype=torch.bool)
    remaining = float(total)
    while free.any():
        share = dense * free / (dense * free).sum() * remaining
        over = free & (alloc + share >= length)
        if not over.any():
            alloc = alloc + share
            break
        alloc[over] = length
        free &= ~over
        remaining = total - float(alloc.sum())
    out = [max(1, min(length, int(math.floor(a + 1e-9)))) for a in alloc.tolist()]
    # hand out the units lost to flooring, to the densest layers first, so the total is exact
    short = min(total, n * length) - sum(out)
    for i in sorted(range(n), key=lambda j: -float(dense[j])):
        if short <= 0:
            break
        if out[i] < length:
            out[i] += 1
            short -= 1
    return out


# ----------------------------------------------------------------------------- LOOK-M


def lookm_select(
    q_all: torch.Tensor, k: torch.Tensor, scaling: float, budget: int, image: torch.Tensor, chunk: int = 256
) -> torch.Tensor:
    """LOOK-M: text-prior heavy hitters.  Every key's accumulated attention (as H2O) is
    lowered by a large penalty on image tokens, so text is kept first; the budget is 90%
    heavy hitters and 10% recent window.  ``image``: ``[L]`` bool."""
    window = max(1, int(0.1 * budget))
    sums = group_mean(attention_column_sums(q_all, k, scaling, chunk), k.shape[0])
    sums = sums - image.to(sums.dtype)[None, :] * 1e4  # attention sums are <= L, so 1e4 puts text first
    return top_with_window(sums, budget, window)


LOOKM_MERGES = ("average", "pivot", "weighted", "none")


def lookm_merge(keys: torch.Tensor, values: torch.Tensor, keep: torch.Tensor, how: str = "average") -> tuple[torch.Tensor, torch.Tensor]:
    """LOOK-M's merging: every evicted entry ``e`` goes to the kept entry ``t`` of its head
    whose key is most similar (cosine of keys; the first on ties), and each kept entry
    becomes the mean of itself and what its evicted entries contribute (LOOK-M's
    ``scatter_reduce(mean, include_self=True)``), keys and values alike:

    * ``average`` (averaged merging): ``k_t' = (k_t + sum_e k_e) / (1 + m_t)``;
    * ``pivot`` (pivotal merging, LOOK-M's ``PivotMerge`` and EffiVLM-Bench's merge): each
      evicted entry is first averaged with its pivot, ``k_t' = (k_t + sum_e (k_e + k_t) / 2) / (1 + m_t)``;
    * ``weighted`` (weighted merging, LOOK-M's ``WeightedMerge``): each evicted entry is
      scaled by its similarity ``s_e`` to the pivot, ``k_t' = (k_t + sum_e s_e k_e) / (1 + m_t)``,
      and only the evicted entries whose similarity, averaged over heads, is at least the
      mean over heads and entries take part (LOOK-M's filter; the ``j``-th evicted entry
      of every head, in position order, is judged together);
    * ``none``: the kept entries unchanged.

    ``m_t`` counts the evicted entries merged into ``t``.  ``keys``/``values``:
    ``[H, L, D]``; ``keep``: ``[H, n]``.  Returns ``[H, n, D]`` pairs (computed in float32)."""
    if how not in LOOKM_MERGES:
        raise ValueError(f"LOOK-M merge {how!r} is not one of {LOOKM_MERGES}")
    h, L, d = keys.shape
    dv = values.shape[-1]
    n = keep.shape[1]
    kept_k = keys.gather(1, keep[..., None].expand(h, n, d))
    kept_v = values.gather(1, keep[..., None].expand(h, n, dv))
    evicted = torch.ones(h, L, dtype=torch.bool, device=keys.device)
    evicted.scatter_(1, keep, False)
    if not evicted.any() or how == "none":
        return kept_k, kept_v
    n_ev = int(evicted[0].sum())
    ev_idx = evicted.nonzero()[:, 1].view(h, n_ev)
    ev_k = keys.gather(1, ev_idx[..., None].expand(h, n_ev, d)).float()
    ev_v = values.gather(1, ev_idx[..., None].expand(h, n_ev, dv)).float()
    kk, kv = kept_k.float(), kept_v.float()
    sim = torch.matmul(F.normalize(ev_k, dim=-1), F.normalize(kk, dim=-1).transpose(1, 2))
    best, target = sim.max(-1)  # [H, n_ev]
    if how == "pivot":
        src_k = (ev_k + kk.gather(1, target[..., None].expand(h, n_ev, d))) / 2
        src_v = (ev_v + kv.gather(1, target[..., None].expand(h, n_ev, dv))) / 2
        take = torch.ones(h, n_ev, dtype=torch.float32, device=keys.device)
    elif how == "weighted":
        take = (best.mean(0) >= best.mean()).to(torch.float32).expand(h, n_ev)
        src_k = ev_k * (best * take)[..., None]
        src_v = ev_v * (best * take)[..., None]
    else:
        src_k, src_v = ev_k, ev_v
        take = torch.ones(h, n_ev, dtype=torch.float32, device=keys.device)
    counts = torch.ones(h, n, dtype=torch.float32, device=keys.device).scatter_add(1, target, take)
    sum_k = kk.scatter_add(1, target[..., None].expand(h, n_ev, d), src_k)
    sum_v = kv.scatter_add(1, target[..., None].expand(h, n_ev, dv), src_v)
    return (sum_k / counts[..., None]).to(keys.dtype), (sum_v / counts[..., None]).to(values.dtype)
