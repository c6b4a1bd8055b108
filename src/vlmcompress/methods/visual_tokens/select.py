"""Pure selection math of visual-token pruning and merging, on one image (or one row).

Indices returned are sorted ascending; ties are broken towards the earlier token
(stable sort), so every selection is deterministic.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..ranking import stable_top_k
from ..layout.attention import attention_column_sums


def visual_budget(n_visual: int, ratio: float) -> int:
    """Visual tokens kept out of ``n_visual`` at ``ratio`` (at least one when there are any)."""
    if n_visual <= 0:
        return 0
    return max(1, min(n_visual, math.floor(n_visual * ratio + 1e-9)))


def top_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` best-scored indices of a 1-D tensor, sorted by position."""
    return stable_top_k(scores, k).sort().values


def received_attention(q: torch.Tensor, k: torch.Tensor, scaling: float, chunk: int = 256, skip: int = 0) -> torch.Tensor:
    """Mean attention each token of one image receives in a bidirectional encoder block:
    ``q``, ``k`` ``[H, n, D]`` (post-rotary) -> ``[n]``, averaged over heads and over the
    queries (so it sums to 1).  ``skip``: the first queries do not count (a CLS token that
    never reaches the language model); every key does.  With ``H = 1`` and the undivided
    projections this is one full-width softmax.  Queries are scored ``chunk`` at a time,
    never the full ``n x n`` map of every head at once."""
    n = q.shape[1]
    if not skip:
        return attention_column_sums(q, k, scaling, chunk, causal=False).mean(0) / n
    kt = k.float().transpose(1, 2)
    total = torch.zeros(q.shape[0], k.shape[1], dtype=torch.float32, device=q.device)
    for start in range(skip, n, chunk):
        total += (torch.matmul(q[:, start : min(n, start + chunk)].float(), kt) * scaling).softmax(-1).sum(1)
    return total.mean(0) / (n - skip)


def cls_query_attention(q: torch.Tensor, k: torch.Tensor, heads: int, scaling: float, full_width: bool) -> torch.Tensor:
    """Attention the CLS query pays every token of its image: ``q`` ``[n, E]`` (the CLS
    row's query projection, heads side by side), ``k`` ``[n, T, E]`` -> ``[n, T]``.

    ``full_width=False`` (VisionZip): the encoder's own per-head softmax (``scaling`` =
    ``head_dim ** -0.5``), summed over the ``heads``.  ``full_width=True`` (PruMerge): ONE
    softmax of ``q . k / sqrt(E)`` over the undivided ``E``-wide projections, i.e. the heads'
    logits summed before a single softmax, scaled by the full width rather than the head
    width; it sums to 1, where the head-summed one sums to ``heads``."""
    q, k = q.float(), k.float()
    n, T, E = k.shape
    if full_width:
        return torch.einsum("ne,nte->nt", q, k).mul(E**-0.5).softmax(-1)
    hd = E // heads
    logits = torch.einsum("nhd,nthd->nht", q.view(n, heads, hd), k.view(n, T, heads, hd)) * scaling
    return logits.softmax(-1).sum(1)


def group_tokens(scores: torch.Tensor, keys: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch-level scores and keys of one image -> one row per LLM token, where every
    ``group`` consecutive patches become one token (Qwen2-VL's PatchMerger packs each 2x2
    window into ``group = 4`` consecutive rows): both are averaged over the window, as
    EffiVLM-Bench does (``view(-1, 4).mean``).  ``scores`` ``[n]`` -> ``[G]``, ``keys``
    ``[n, Dk]`` -> ``[G, Dk]``."""
    n = scores.shape[0]
    if n % group:
        raise ValueError(f"{n} patches do not split into merger groups of {group}")
    G = n // group
    return scores.float().view(G, group).mean(-1), keys.float().reshape(G, group, -1).mean(1)


def square_tokens(scores: torch.Tensor, keys: torch.Tensor, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch-level scores and keys of square tiles -> one row per pixel-shuffled token
    (InternVL packs each ``side x side`` square of patches into one token, squares in
    raster order): averaged over the square, as EffiVLM-Bench does (``view(16, 2, 16,
    2).mean((2, 4))``).  ``scores`` ``[n, P]`` -> ``[n, G]``, ``keys`` ``[n, P, Dk]`` ->
    ``[n, G, Dk]`` with ``P = s * s`` patches per tile and ``G = (s / side) ** 2``."""
    n, P = scores.shape
    s = math.isqrt(P)
    if s * s != P or s % side:
        raise ValueError(f"{P} patches per tile do not form a square of {side}x{side} squares")
    g = s // side
    sc = scores.float().view(n, g, side, g, side).mean((2, 4)).flatten(1)
    ks = keys.float().reshape(n, g, side, g, side, -1).mean((2, 4)).flatten(1, 2)
    return sc, ks


def fastv_keep(scores: torch.Tensor, image: torch.Tensor, ratio: float) -> torch.Tensor:
    """FastV on one row: ``scores`` ``[L]`` = attention each token receives at layer K-1
    (averaged over heads and the chosen queries), ``image`` ``[L]`` bool.  Returns the
    ``[L]`` keep mask: every text token, and the top ``ratio`` of the image tokens."""
    img_idx = image.nonzero().flatten()
    keep = ~image.clone()
    n = visual_budget(img_idx.numel(), ratio)
    if n:
        keep[img_idx[top_indices(scores[img_idx], n)]] = True
    return keep


def visionzip_split(n_keep: int, dominant_share: float) -> tuple[int, int]:
    """(dominant, contextual) token counts of a VisionZip budget."""
    dominant = min(n_keep, max(1, round(n_keep * dominant_share)))
    return dominant, n_keep - dominant


def visionzip_select(attention: torch.Tensor, metric: torch.Tensor, n_keep: int, dominant_share: float, cls: bool = False):
    """VisionZip on one image of ``P`` tokens.

    ``attention`` ``[P]``: attention each token receives (CLS attention summed over heads);
    ``metric`` ``[P, Dm]``: the keys used to compare tokens.  Dominant tokens are the top
    by attention; the remaining ones are split into evenly strided *targets* (the
    contextual tokens: positions ``0, s, 2s, ...`` of the remaining list, ``s = rest //
    n_ctx``) and the rest, each merged into its most similar target (cosine).
    ``cls=True``: token 0 is the CLS token, which the reference always keeps as one of
    the dominant tokens (``dominant`` = CLS + the best ``n_dom - 1`` patches) and never
    offers as a contextual target.

    Returns ``(dominant [n_d], targets [n_c], merged [m], assign [m])``: indices into the
    image's tokens; ``assign[i]`` is the position in ``targets`` that ``merged[i]`` joins.
    """
    P = attention.shape[0]
    dev = attention.device
    n_dom, n_ctx = visionzip_split(min(n_keep, P), dominant_share)
    if cls:
        dominant = torch.cat([torch.zeros(1, dtype=torch.long, device=dev), top_indices(attention[1:], n_dom - 1) + 1])
    else:
        dominant = top_indices(attention, n_dom)
    rest = torch.ones(P, dtype=torch.bool, device=dev)
    rest[dominant] = False
    rest_idx = rest.nonzero().flatten()
    if n_ctx == 0 or rest_idx.numel() == 0:
        empty = torch.empty(0, dtype=torch.long, device=dev)
        return dominant, empty, empty, empty
    n_ctx = min(n_ctx, rest_idx.numel())
    step = max(1, rest_idx.numel() // n_ctx)
    pick = torch.arange(0, rest_idx.numel(), step, device=dev)[:n_ctx]
    targets = rest_idx[pick]
    others = torch.ones(rest_idx.numel(), dtype=torch.bool, device=dev)
    others[pick] = False
    merged = rest_idx[others]
    if merged.numel() == 0:
        return dominant, targets, merged, merged
    m = F.normalize(metric.float(), dim=-1)
    assign = (m[merged] @ m[targets].T).argmax(-1)
    return dominant, targets, merged, assign


def merge_into_targets(features: torch.Tensor, targets: torch.Tensor, merged: torch.Tensor, assign: torch.Tensor) -> torch.Tensor:
    """VisionZip's contextual tokens: ``target + mean(tokens assigned to it)`` (a target
    nothing is assigned to is left as is).  ``features`` ``[P, C]``; returns a copy."""
    out = features.clone()
    if merged.numel() == 0:
        return out
    C = features.shape[-1]
    sums = torch.zeros(targets.numel(), C, dtype=torch.float32, device=features.device)
    sums.index_add_(0, assign, features[merged].float())
    counts = torch.bincount(assign, minlength=targets.numel()).clamp(min=1).to(torch.float32)[:, None]
    out[targets] = (features[targets].float() + sums / counts).to(features.dtype)
    return out


def iqr_outliers(attention: torch.Tensor) -> torch.Tensor:
    """Indices whose attention lies above ``Q3 + 1.5 IQR`` (PruMerge's adaptive set), by
    decreasing attention."""
    q1, q3 = torch.quantile(attention.float(), torch.tensor([0.25, 0.75], device=attention.device))
    bound = q3 + 1.5 * (q3 - q1)
    idx = (attention.float() > bound).nonzero().flatten()
    return idx[torch.sort(attention[idx], descending=True, stable=True).indices]


def prumerge_plus_select(attention: torch.Tensor, n_keep: int) -> torch.Tensor:
    """PruMerge+ kept set under a budget, EffiVLM-Bench's rule: the adaptive set is the
    IQR outliers (at least one token: the best one when there is no outlier).  When the
    budget exceeds it, the other slots go to the spatially uniform positions ``0, s, 2s,
    ...`` (``s = P // n_keep``) that the adaptive set does not hold, in that order (there
    are always enough: the grid has ``ceil(P / s) >= n_keep`` points); otherwise the
    ``n_keep`` best tokens by attention are kept."""
    P = attention.shape[0]
    n_keep = min(n_keep, P)
    n_adaptive = max(1, iqr_outliers(attention).numel())
    if n_keep <= n_adaptive:
        return top_indices(attention, n_keep)
    adaptive = top_indices(attention, n_adaptive)
    taken = torch.zeros(P, dtype=torch.bool, device=attention.device)
    taken[adaptive] = True
    grid = torch.arange(0, P, max(1, P // n_keep), device=attention.device)
    fill = grid[~taken[grid]][: n_keep - n_adaptive]
    return torch.cat([adaptive, fill]).sort().values


def prumerge_merge(features: torch.Tensor, keys: torch.Tensor, attention: torch.Tensor, kept: torch.Tensor, neighbours: int, pool: str = "all") -> torch.Tensor:
    """PruMerge's merge: each kept token ``x_i`` becomes ``x_i + sum_j a_j x_j`` over its
    ``neighbours`` most key-similar (cosine) tokens ``j``, weighted by their raw attention
    score ``a_j`` (not normalised), all read from the unmerged features.

    ``pool="all"`` (the reference): ``j`` ranges over every other token of the image,
    kept or pruned.  ``pool="pruned"``: over the pruned tokens only (nothing is merged
    when nothing is pruned, and no kept token's information is counted twice).
    Returns the kept tokens' features ``[n, C]``."""
    P = features.shape[0]
    n = kept.numel()
    candidate = torch.ones(n, P, dtype=torch.bool, device=features.device)
    if pool == "pruned":
        candidate[:, kept] = False
    else:
        candidate[torch.arange(n, device=features.device), kept] = False  # every token but itself
    nb = min(neighbours, int(candidate[0].sum()) if n else 0)
    if nb <= 0:
        return features[kept].clone()
    k = F.normalize(keys.float(), dim=-1)
    sim = (k[kept] @ k.T).masked_fill(~candidate, float("-inf"))  # [n, P]
    idx = stable_top_k(sim, nb)  # [n, nb]
    w = attention.float()[idx][..., None]
    return (features[kept].float() + (features.float()[idx] * w).sum(1)).to(features.dtype)


def prumerge_extra_token(features: torch.Tensor, attention: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """PruMerge+'s extra token: the attention-weighted sum ``sum_j a_j x_j`` of the pruned
    tokens (raw weights), ``[C]``."""
    pruned = torch.ones(features.shape[0], dtype=torch.bool, device=features.device)
    pruned[kept] = False
    return (features[pruned].float() * attention.float()[pruned][:, None]).sum(0).to(features.dtype)
