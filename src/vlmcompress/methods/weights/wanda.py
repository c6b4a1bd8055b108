"""Wanda: pruning by weights and activations."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..base import METHODS
from .calibration import StatKinds
from .pruning import WeightPruner, apply_pruned, nm_prune_mask, row_prune_mask


def wanda_scores(weight: torch.Tensor, col_norm: torch.Tensor) -> torch.Tensor:
    """``S_ij = |W_ij| · ||X_j||_2`` (Sun et al. 2024, Eq. 1)."""
    return weight.detach().abs().float() * col_norm.float().reshape(1, -1)


def wanda_mask(weight: torch.Tensor, col_norm: torch.Tensor, sparsity: float, nm: tuple[int, int] | None = None) -> torch.Tensor:
    """``True`` = pruned: per output row the lowest scores (``int(in · sparsity)`` of
    them), or the ``M-N`` lowest of every ``M`` consecutive inputs."""
    score = wanda_scores(weight, col_norm)
    return nm_prune_mask(score, *nm) if nm is not None else row_prune_mask(score, sparsity)


@METHODS.register
@dataclass
class Wanda(WeightPruner):
    """Wanda (Sun et al., "A Simple and Effective Pruning Approach for Large Language
    Models", ICLR 2024).

    Score ``|W_ij| · ||X_j||_2`` with ``X`` the calibration inputs of the layer (image and
    text tokens, padding dropped); the lowest scores of each output row are pruned.
    Blocks are processed in order, each fed by the already-pruned earlier blocks; no
    weight update.
    """

    name = "wanda"
    needs_calibration = True
    stat_kinds = StatKinds(sq_norm=True)


    def layer_sparsity(self, name: str) -> float:
        return self.sparsity

    def process(self, ctx, linears, stats, block, report) -> None:
        for name, lin in linears.items():
            mask = wanda_mask(lin.weight, stats[name].col_norm, self.layer_sparsity(name), self.n_m)
            apply_pruned(lin, lin.weight.data.masked_fill(mask, 0), report, self.n_m)
