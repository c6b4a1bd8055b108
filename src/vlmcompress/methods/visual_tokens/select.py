"""Pure selection math of visual-token pruning and merging, on one image (or one row).

Indices returned are sorted ascending; ties are broken towards the earlier token
(stable sort), so every selection is deterministic.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..layout.attention import attention_column_sums


def visual_budget(n_visual: int, ratio: float) -> int:
    """Visual tokens kept out of ``n_visual`` at ``ratio`` (at least one when there are any)."""
    if n_visual <= 0:
        return 0
    return max(1, min(n_visual, math.floor(n_visual * ratio + 1e-9)))


def top_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` best-scored indices of a 1-D tensor, sorted by position."""
    return torch.sort(scores, descending=True, stable=True).indices[:k].sort().values


def received_attention(q: torch.Tensor, k: torch.Tensor, scaling: float, chunk: int = 256) -> torch.Tensor:
    """Mean attention each token of one image receives in a bidirectional encoder block:
    ``q``, ``k`` ``[H, n, D]`` (post-rotary) -> ``[n]``, averaged over heads and over all
    ``n`` queries (so it sums to 1).  Queries are scored ``chunk`` at a time, never the
    full ``n x n`` map of every head at once."""
    n = q.shape[1]
    return attention_column_sums(q, k, scaling, chunk, causal=False).mean(0) / n


def group_tokens(scores: torch.Tensor, keys: torch.Tensor, features: torch.Tensor, group: int):
    """Patch-level tensors of one image -> one row per LLM token, where every ``group``
    consecutive patches become one token (Qwen2-VL's PatchMerger packs each 2x2 window
    into ``group = 4`` consecutive rows).  ``scores`` ``[n]`` -> ``[G]`` summed (the share of
    attention the window receives); ``keys`` ``[n, Dk]`` -> ``[G, group*Dk]`` and ``features``
    ``[n, C]`` -> ``[G, group*C]`` concatenated, the way the merger itself reads a window."""
    n = scores.shape[0]
    if n % group:
        raise ValueError(f"{n} patches do not split into merger groups of {group}")
    G = n // group
    return scores.view(G, group).sum(-1), keys.reshape(G, -1), features.reshape(G, -1)


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


def visionzip_select(attention: torch.Tensor, metric: torch.Tensor, n_keep: int, dominant_share: float):
    """VisionZip on one image of ``P`` tokens.

    ``attention`` ``[P]``: attention each token receives (CLS attention summed over heads);
    ``metric`` ``[P, Dm]``: the keys used to compare tokens.  Dominant tokens are the top
    by attention; the remaining ones are split into evenly strided *targets* (the
    contextual tokens) and the rest, each merged into its most similar target (cosine).

    Returns ``(dominant [n_d], targets [n_c], merged [m], assign [m])``: indices into the
    image's tokens; ``assign[i]`` is the position in ``targets`` that ``merged[i]`` joins.
    """
    P = attention.shape[0]
    n_dom, n_ctx = visionzip_split(min(n_keep, P), dominant_share)
    dominant = top_indices(attention, n_dom)
    rest = torch.ones(P, dtype=torch.bool, device=attention.device)
    rest[dominant] = False
    rest_idx = rest.nonzero().flatten()
    if n_ctx == 0 or rest_idx.numel() == 0:
        empty = torch.empty(0, dtype=torch.long, device=attention.device)
        return dominant, empty, empty, empty
    n_ctx = min(n_ctx, rest_idx.numel())
    step = max(1, rest_idx.numel() // n_ctx)
    pick = torch.arange(0, rest_idx.numel(), step, device=attention.device)[:n_ctx]
    targets = rest_idx[pick]
    others = torch.ones(rest_idx.numel(), dtype=torch.bool, device=attention.device)
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
    """PruMerge+ kept set: the IQR outliers (capped at the budget, best first), then
    spatially uniform samples (evenly strided indices not yet chosen) up to the budget."""
    P = attention.shape[0]
    n_keep = min(n_keep, P)
    chosen = iqr_outliers(attention)[:n_keep].tolist()
    taken = set(chosen)
    if len(chosen) < n_keep:
        need = n_keep - len(chosen)
        free = [i for i in range(P) if i not in taken]
        step = len(free) / need
        chosen += [free[int(j * step)] for j in range(need)]
    return torch.tensor(sorted(chosen), dtype=torch.long, device=attention.device)


def prumerge_merge(features: torch.Tensor, keys: torch.Tensor, attention: torch.Tensor, kept: torch.Tensor, neighbours: int) -> torch.Tensor:
    """PruMerge's merge: each kept token ``x_i`` becomes ``x_i + sum_j a_j x_j`` over its
    ``neighbours`` most key-similar *pruned* tokens ``j``, weighted by their CLS attention
    ``a_j``.  (The reference also lets kept tokens absorb each other; drawing neighbours
    from the pruned tokens only means nothing is merged when nothing is pruned, and no
    kept token's information is counted twice.)  Returns the kept tokens' features ``[n, C]``."""
    P = features.shape[0]
    pruned = torch.ones(P, dtype=torch.bool, device=features.device)
    pruned[kept] = False
    pruned_idx = pruned.nonzero().flatten()
    nb = min(neighbours, pruned_idx.numel())
    if nb <= 0:
        return features[kept].clone()
    k = F.normalize(keys.float(), dim=-1)
    sim = k[kept] @ k[pruned_idx].T  # [n, P - n]
    idx = pruned_idx[torch.sort(sim, dim=-1, descending=True, stable=True).indices[:, :nb]]  # [n, nb]
    w = attention.float()[idx][..., None]
    return (features[kept].float() + (features.float()[idx] * w).sum(1)).to(features.dtype)
