"""SparseGPT: one-shot OBS pruning with weight reconstruction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..base import METHODS
from .calibration import StatKinds
from .gptq import _prepare_hessian, damped_inverse_cholesky
from .pruning import WeightPruner, apply_pruned, layer_prune_mask


def _kept_floor(sparsity: float, cols: int, in_f: int) -> int:
    """Pruned count among the first ``cols`` columns; equals ``int(in_f · sparsity)`` at ``cols = in_f``."""
    return int(in_f * sparsity) if cols == in_f else int(cols * sparsity)


MASKS = ("block", "row")


def sparsegpt_prune(
    W: torch.Tensor,
    H: torch.Tensor,
    sparsity: float,
    nm: tuple[int, int] | None = None,
    *,
    damp: float = 0.01,
    block_size: int = 128,
    mask: str = "block",
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT's ``fasterprune`` on one ``[out, in]`` weight; returns ``(W', mask)``.

    Same Hessian and dampened inverse-Cholesky factor ``U`` as GPTQ.  Columns are
    visited left to right in blocks of ``block_size``; a weight's pruning cost is
    ``w² / U_ii²``, on the weights as updated by the earlier blocks.  Unstructured,
    chosen at each block start ``[i1, i2)``:

    * ``mask="block"`` (default, the paper's and the reference's rule): the
      ``int(rows · (i2 - i1) · sparsity)`` lowest costs of the whole block, compared
      jointly across rows, so rows end with different sparsities.  The reference takes
      the threshold ``t = sorted(cost)[int(numel · sparsity)]`` and prunes ``cost <= t``,
      i.e. that many weights *plus one* (plus ties); we prune exactly
      ``int(numel · sparsity)`` (``cost < t`` without ties), so the layer sparsity is the
      requested one; the masks differ by that single weight per block.
    * ``mask="row"``: in every row, the ``round-down(sparsity · i2) -
      round-down(sparsity · i1)`` lowest costs of the block, so every row ends with
      exactly ``int(in · sparsity)`` zeros (as Wanda's per-row groups), at about 3 %
      more layer output error than the joint mask (measured at 50-60 % sparsity).

    N:M (``mask`` unused): at every M-th column, the ``M-N`` lowest-cost weights of the
    next M columns of each row (on the error-updated weights, as the reference).  After
    each column the error ``(w - w') / U_ii`` is propagated to the remaining columns
    (OBS update).
    """
    if mask not in MASKS:
        raise ValueError(f"mask={mask!r}; expected one of {MASKS}")
    out_f, in_f = W.shape
    W, H = _prepare_hessian(W, H)
    Hinv = damped_inverse_cholesky(H, damp)
    pruned = torch.zeros_like(W, dtype=torch.bool)
    for i1 in range(0, in_f, block_size):
        i2 = min(i1 + block_size, in_f)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        d = Hinv1.diagonal()
        mask1 = torch.zeros_like(W1, dtype=torch.bool)
        if nm is None:
            cost = W1**2 / d.reshape(1, -1) ** 2
            if mask == "block":
                mask1 = layer_prune_mask(cost, sparsity)  # jointly over the [rows, block] slice
            else:
                # cumulative rounding: the per-row total is exactly int(in · sparsity)
                k = _kept_floor(sparsity, i2, in_f) - _kept_floor(sparsity, i1, in_f)
                if k:
                    idx = torch.sort(cost, dim=1, stable=True).indices[:, :k]
                    mask1.scatter_(1, idx, True)
        for i in range(count):
            if nm is not None and i % nm[1] == 0:
                n, m = nm
                cost = W1[:, i : i + m] ** 2 / d[i : i + m].reshape(1, -1) ** 2
                idx = torch.sort(cost, dim=1, stable=True).indices[:, : m - n]
                mask1.scatter_(1, i + idx, True)
            w = W1[:, i]
            q = w.masked_fill(mask1[:, i], 0)
            err = (w - q) / d[i]
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            W1[:, i] = q
            Err1[:, i] = err
        W[:, i1:i2] = W1
        pruned[:, i1:i2] = mask1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return W.masked_fill(pruned, 0), pruned


@METHODS.register
@dataclass
class SparseGPT(WeightPruner):
    """SparseGPT (Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be
    Accurately Pruned in One-Shot", ICML 2023).

    Per Linear: GPTQ's Hessian ``H = 2/n Σ x xᵀ`` (dampened), mask by
    ``w² / [chol(H⁻¹)]_ii²`` chosen block by block, and the remaining weights updated to
    compensate (OBS), see :func:`sparsegpt_prune`.  Blocks of the model in order, each
    fed by the already-pruned earlier blocks.

    ``mask``: ``block`` (default; the paper's and the reference's rule) compares the
    costs of a whole ``[rows, block_size]`` slice jointly, so the per-row sparsity
    varies; ``row`` prunes the same count in every row (exact per-row sparsity, as
    Wanda), at about 3 % more layer output error (measured).  N:M ignores it.
    """

    name = "sparsegpt"
    needs_calibration = True
    stat_kinds = StatKinds(hessian=True)

    damp: float = 0.01  # dampening, as a fraction of the mean Hessian diagonal
    block_size: int = 128  # columns per block (mask selection and lazy updates)
    mask: Literal["block", "row"] = "block"  # unstructured mask: lowest costs of the whole block (reference) or of each row

    def validate(self) -> None:
        super().validate()
        self.check_range("damp", 0, 1, low_open=True)
        self.check_range("block_size", 1)
        self.check_choice("mask", MASKS)
        nm = self.n_m
        if nm is not None and self.block_size % nm[1]:
            from ...errors import ConfigError

            raise ConfigError(f"sparsegpt: block_size={self.block_size} must be a multiple of M={nm[1]} for nm={self.nm}")

    def process(self, ctx, linears, stats, block, report) -> None:
        for name, lin in linears.items():
            W, _ = sparsegpt_prune(lin.weight.detach(), stats[name].hessian, self.sparsity, self.n_m, damp=self.damp, block_size=self.block_size, mask=self.mask)
            apply_pruned(lin, W, report, self.n_m)
