"""The ``k`` best of a score tensor in the order a stable descending sort gives them.

Token pruning and eviction rank scores that tie for real (identical patches of a flat
image region, equal attention after masking), and every selection here breaks a tie
towards the earlier position, so a sample keeps the same tokens on every run.  A full
stable sort does that, at ``O(n log n)`` per row for a handful of winners; ``topk`` is
``O(n)`` but says nothing of the order of ties.  :func:`stable_top_k` takes ``topk``'s set
when no tie straddles its boundary (checked, one comparison pass) and orders it stably;
otherwise it falls back to the full stable sort.
"""

from __future__ import annotations

import torch


def stable_top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest entries along the last dimension, exactly
    ``torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]``."""
    n = scores.shape[-1]
    k = min(k, n)
    if k == n or k == 0 or scores.is_floating_point() and bool(torch.isnan(scores).any()):
        return torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]
    values, index = torch.topk(scores, k, dim=-1, sorted=True)
    # topk's set is the sort's set unless entries equal to the k-th value are left outside
    if bool(((scores >= values[..., -1:]).sum(-1) != k).any()):
        return torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]
    by_position = index.sort(dim=-1).values
    order = torch.sort(scores.gather(-1, by_position), dim=-1, descending=True, stable=True).indices
    return by_position.gather(-1, order)
