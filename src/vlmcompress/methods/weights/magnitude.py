"""Magnitude pruning: remove the smallest |w|."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..base import METHODS
from .pruning import WeightPruner, apply_pruned


def magnitude_mask(weight: torch.Tensor, sparsity: float, nm: tuple[int, int] | None = None) -> torch.Tensor:
    """``True`` = pruned: the ``int(numel · sparsity)`` smallest ``|w|`` of the layer, or
    the ``M-N`` smallest of every ``M`` consecutive inputs of a row."""
    from .pruning import layer_prune_mask, nm_prune_mask

    score = weight.detach().abs().float()
    return nm_prune_mask(score, *nm) if nm is not None else layer_prune_mask(score, sparsity)


@METHODS.register
@dataclass
class Magnitude(WeightPruner):
    """Magnitude pruning (Han et al., "Learning both Weights and Connections for
    Efficient Neural Networks", NeurIPS 2015; the baseline of Wanda, Sun et al. 2024):
    per layer, the smallest-magnitude weights are set to zero.  No calibration data."""

    name = "magnitude"


    def process(self, ctx, linears, stats, block, report) -> None:
        for _, lin in linears.items():
            mask = magnitude_mask(lin.weight, self.sparsity, self.n_m)
            apply_pruned(lin, lin.weight.data.masked_fill(mask, 0), report, self.n_m)
