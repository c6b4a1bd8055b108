"""GPTQ: second-order (OBS) weight quantization with error feedback."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...quant import choose_qparams
from ..base import METHODS
from .calibration import StatKinds
from .common import WeightQuantizer, install_quantized
from .packed import PARAM_DTYPE, QuantizedWeight


def damped_inverse_cholesky(H: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + λI)⁻¹`` with ``λ = damp · mean(diag H)``.

    Its rows give, for each column ``i``, the OBS update of the columns after ``i``
    (Frantar et al. 2023, §3 "Cholesky reformulation").
    """
    H = H.clone()
    H.diagonal().add_(damp * H.diagonal().mean())
    L = torch.linalg.cholesky(H)
    return torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)


def _prepare_hessian(W: torch.Tensor, H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dead inputs (never non-zero in calibration) get ``H_ii = 1`` and their weights 0,
    as the reference does: they cannot affect the output on calibration data."""
    H = H.clone().float()
    W = W.clone().float()
    dead = H.diagonal() == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    return W, H


def _quantize_column(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int) -> tuple[torch.Tensor, torch.Tensor]:
    q = torch.clamp(torch.round(w / scale) + zero, 0, maxq)
    return q, (q - zero) * scale


def gptq_quantize(
    W: torch.Tensor,
    H: torch.Tensor,
    bits: int,
    group_size: int | None = None,
    *,
    damp: float = 0.01,
    block_size: int = 128,
    act_order: bool = False,
    symmetric: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPTQ on one ``[out, in]`` weight with input Hessian ``H = 2/n Σ x xᵀ``.

    Columns are quantized left to right in blocks of ``block_size``; after each column
    the rounding error, divided by the diagonal of the inverse-Hessian Cholesky factor,
    is spread over the not-yet-quantized columns (lazy batch updates between blocks).
    The quantizer is asymmetric min/max with an integer zero (the reference's
    ``Quantizer``: range widened to contain 0), per output row, and per group of
    ``group_size`` input columns when given: the group's (scale, zero) are fixed when
    its first column is reached, from the weights updated by every column before it.
    The reference reads them from ``W``, which holds only the earlier *blocks'* updates,
    so the two differ when a group starts inside a block; ours does not depend on
    ``block_size`` (and equals the reference run with ``block_size == group_size``).
    With ``act_order`` columns go in order of decreasing ``H_ii``; groups are then
    fixed up front on the original columns ("static groups", as AutoGPTQ), so that the
    stored layout needs no column permutation.

    Returns ``(codes [out,in] uint8, scale [out, in/G], zero [out, in/G])``; scale and
    zero are rounded to fp16, the storage dtype, before any code is computed.
    """
    out_f, in_f = W.shape
    G = group_size or in_f
    maxq = 2**bits - 1
    W, H = _prepare_hessian(W, H)
    n_groups = in_f // G

    scales = torch.zeros(out_f, n_groups, device=W.device)
    zeros = torch.zeros(out_f, n_groups, device=W.device)

    def group_params(cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, z = choose_qparams(cols, bits, (1, cols.shape[1]), symmetric=symmetric, zero_point="int")
        s = s.to(PARAM_DTYPE).float()
        s = torch.where(s > 0, s, torch.ones_like(s))
        return s[:, 0], z[:, 0]

    perm = None
    if act_order:
        perm = torch.argsort(H.diagonal(), descending=True)
        for g in range(n_groups):  # static groups on the original column order
            scales[:, g], zeros[:, g] = group_params(W[:, g * G : (g + 1) * G])
        W = W[:, perm]
        H = H[perm][:, perm]
    group_of = torch.arange(in_f, device=W.device) // G
    if perm is not None:
        group_of = group_of[perm]

    Hinv = damped_inverse_cholesky(H, damp)
    Q = torch.zeros_like(W)
    codes = torch.zeros(out_f, in_f, dtype=torch.uint8, device=W.device)
    for i1 in range(0, in_f, block_size):
        i2 = min(i1 + block_size, in_f)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if perm is None and col % G == 0:
                # Group params from the current (error-updated) weights of the group:
                # columns already inside this block are in W1, later ones still in W.
                cur = torch.cat([W1[:, i:], W[:, i2:]], dim=1)[:, :G]
                scales[:, col // G], zeros[:, col // G] = group_params(cur)
            g = int(group_of[col])
            w = W1[:, i]
            d = Hinv1[i, i]
            q, wq = _quantize_column(w, scales[:, g], zeros[:, g], maxq)
            codes[:, col] = q.to(torch.uint8)
            Q[:, col] = wq
            err = (w - wq) / d
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    if perm is not None:
        inv = torch.argsort(perm)
        codes = codes[:, inv]
    return codes, scales, zeros


@METHODS.register
@dataclass
class GPTQ(WeightQuantizer):
    """GPTQ (Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative
    Pre-trained Transformers", ICLR 2023).

    Per Linear: ``H = 2/n Σ x xᵀ`` over the calibration tokens reaching it (fed by the
    already-quantized earlier blocks), dampened by ``damp · mean(diag H)``; columns are
    quantized in order with the OBS error update (see :func:`gptq_quantize`).  Integer
    zero points, fp16 scales, as the reference.  ``bits=16`` leaves weights untouched.
    """

    name = "gptq"
    needs_calibration = True
    stat_kinds = StatKinds(hessian=True)

    group_size: int = 128  # input columns per (scale, zero); 0 = one group per output row
    damp: float = 0.01  # dampening, as a fraction of the mean Hessian diagonal
    block_size: int = 128  # columns per lazy-update block (speed only; the result is the same)
    act_order: bool = False  # quantize columns in order of decreasing H_ii
    symmetric: bool = False  # symmetric quantizer

    def validate(self) -> None:
        super().validate()
        self.check_range("group_size", 0)
        self.check_range("damp", 0, 1, low_open=True)
        self.check_range("block_size", 1)

    def uses_groups(self) -> bool:
        return self.group_size > 0  # 0 = one group per output row

    def process(self, ctx, linears, stats, block, report) -> None:
        for name, lin in linears.items():
            G = self.group_size or lin.in_features
            codes, scale, zero = gptq_quantize(
                lin.weight.detach(), stats[name].hessian, self.bits, G, damp=self.damp, block_size=self.block_size, act_order=self.act_order, symmetric=self.symmetric
            )
            qw = QuantizedWeight.from_codes(codes, scale, zero, self.bits, (1, G), "int")
            install_quantized(ctx.model, name, lin, qw, self.storage, report)
