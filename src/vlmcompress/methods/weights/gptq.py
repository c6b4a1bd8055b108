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
    as the reference does: they cannot affect the output on calibration data.

    Work in float32 (the references' precision), or float64 when both inputs are."""
    dt = torch.float64 if W.dtype == H.dtype == torch.float64 else torch.float32
    H = H.clone().to(dt)
    W = W.clone().to(dt)
    dead = H.diagonal() == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    return W, H


def gptq_qparams(cols: torch.Tensor, bits: int, symmetric: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row ``(scale, zero)`` of ``cols [out, G]`` with an integer zero, as GPTQ's
    ``Quantizer`` and llm-compressor's min/max observer; the scale is rounded to fp16
    (the storage dtype) here, so every code is computed with the stored scale.

    Asymmetric: the range ``[min(x, 0), max(x, 0)]``, ``scale = (xmax - xmin) / maxq``,
    ``zero = round(-xmin / scale)`` (torchao's rule, :func:`choose_qparams`).
    Symmetric: ``xmax = max|x|``, ``xmin = -xmax``, so ``scale = 2·max|x| / maxq`` and
    ``zero = (maxq + 1) / 2 = 2^(b-1)``: codes run over the whole ``0..maxq`` (±max|x|
    sit at ±maxq/2 steps, so round to the end codes, up to the fp16 rounding of the
    scale; ``maxq + 1`` is clamped to ``maxq``).  GPTQ's
    ``Quantizer`` keeps ``xmin = 0`` for a row with no negative value (scale
    ``max/maxq``); we use ``2·max|x|/maxq`` for every row, as llm-compressor does
    (``max|x| / ((2^b - 1) / 2)``), so no positive value falls above the top code.
    An all-zero row gets scale 1 (every code equals the zero point).
    """
    if symmetric:
        maxq = 2**bits - 1
        amax = cols.abs().amax(dim=1)
        s = 2 * amax / maxq
        z = torch.full_like(s, float(2 ** (bits - 1)))
    else:
        s, z = choose_qparams(cols, bits, (1, cols.shape[1]), symmetric=False, zero_point="int")
        s, z = s[:, 0], z[:, 0]
    s = s.to(PARAM_DTYPE).to(cols.dtype)
    s = torch.where(s > 0, s, torch.ones_like(s))
    return s, z.to(cols.dtype)


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
    static_groups: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPTQ on one ``[out, in]`` weight with input Hessian ``H = 2/n Σ x xᵀ``.

    Columns are quantized left to right in blocks of ``block_size``; after each column
    the rounding error, divided by the diagonal of the inverse-Hessian Cholesky factor,
    is spread over the not-yet-quantized columns (lazy batch updates between blocks).

    Quantizer (:func:`gptq_qparams`): integer zero, per output row and per group of
    ``group_size`` input columns.  Asymmetric (default) is min/max with the range
    widened to contain 0.  ``symmetric``: ``scale = 2·max|x| / (2^b - 1)`` and
    ``zero = 2^(b-1)``, as GPTQ's ``Quantizer(sym=True)`` and llm-compressor, so the
    codes use the whole ``0..2^b - 1`` range.

    Where each group's (scale, zero) come from:

    * ``static_groups`` (or ``act_order``): fixed up front from the original weights
      (after zeroing dead inputs), before any error update, as GPTQ's
      ``static_groups=True`` and llm-compressor (whose observer runs on the whole weight
      before the loop).
    * otherwise (dynamic): fixed when the group's first column is reached, from the
      weights updated by every column before it.  The reference reads them from ``W``,
      which holds only the earlier *blocks'* updates, so the two differ when a group
      starts inside a block; ours does not depend on ``block_size`` (and equals the
      reference run with ``block_size == group_size``).

    With ``act_order`` columns go in order of decreasing ``H_ii``; groups are then
    always static (on the original column order, as AutoGPTQ), so that the stored
    layout needs no column permutation.

    Returns ``(codes [out,in] uint8, scale [out, in/G], zero [out, in/G])``; scale and
    zero are rounded to fp16, the storage dtype, before any code is computed.
    """
    out_f, in_f = W.shape
    G = group_size or in_f
    maxq = 2**bits - 1
    W, H = _prepare_hessian(W, H)
    n_groups = in_f // G
    static = static_groups or act_order

    scales = torch.zeros(out_f, n_groups, device=W.device, dtype=W.dtype)
    zeros = torch.zeros(out_f, n_groups, device=W.device, dtype=W.dtype)
    if static:  # from the original weights, in the original column order
        for g in range(n_groups):
            scales[:, g], zeros[:, g] = gptq_qparams(W[:, g * G : (g + 1) * G], bits, symmetric)

    perm = None
    if act_order:
        perm = torch.argsort(H.diagonal(), descending=True)
        W = W[:, perm]
        H = H[perm][:, perm]
    group_of = torch.arange(in_f, device=W.device) // G
    if perm is not None:
        group_of = group_of[perm]

    Hinv = damped_inverse_cholesky(H, damp)
    codes = torch.zeros(out_f, in_f, dtype=torch.uint8, device=W.device)
    for i1 in range(0, in_f, block_size):
        i2 = min(i1 + block_size, in_f)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if not static and col % G == 0:
                # Group params from the current (error-updated) weights of the group:
                # columns already inside this block are in W1, later ones still in W.
                cur = torch.cat([W1[:, i:], W[:, i2:]], dim=1)[:, :G]
                scales[:, col // G], zeros[:, col // G] = gptq_qparams(cur, bits, symmetric)
            g = int(group_of[col])
            w = W1[:, i]
            d = Hinv1[i, i]
            q, wq = _quantize_column(w, scales[:, g], zeros[:, g], maxq)
            codes[:, col] = q.to(torch.uint8)
            err = (w - wq) / d
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    if perm is not None:
        codes = codes[:, torch.argsort(perm)]
    return codes, scales.float(), zeros.float()


@METHODS.register
@dataclass
class GPTQ(WeightQuantizer):
    """GPTQ (Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative
    Pre-trained Transformers", ICLR 2023).

    Per Linear: ``H = 2/n Σ x xᵀ`` over the calibration tokens reaching it (fed by the
    already-quantized earlier blocks), dampened by ``damp · mean(diag H)``; columns are
    quantized in order with the OBS error update (see :func:`gptq_quantize`).  Integer
    zero points, fp16 scales, as the reference.  ``bits=16`` leaves weights untouched.

    ``symmetric``: ``scale = 2·max|w| / (2^b - 1)``, ``zero = 2^(b-1)`` (GPTQ's
    ``Quantizer(sym=True)``, llm-compressor), codes over the full ``0..2^b - 1``.
    ``static_groups``: every group's (scale, zero) from the original weights before
    any error update (GPTQ's ``--static-groups``, llm-compressor's only behaviour);
    default off: each group's from the error-updated weights when it is reached (GPTQ's
    default).  ``act_order`` always uses static groups.
    """

    name = "gptq"
    needs_calibration = True
    stat_kinds = StatKinds(hessian=True)

    group_size: int = 128  # input columns per (scale, zero); 0 = one group per output row
    damp: float = 0.01  # dampening, as a fraction of the mean Hessian diagonal
    block_size: int = 128  # columns per lazy-update block (speed only; the result is the same)
    act_order: bool = False  # quantize columns in order of decreasing H_ii (implies static groups)
    symmetric: bool = False  # symmetric quantizer: scale 2·max|w|/(2^b-1), zero 2^(b-1) (GPTQ, llm-compressor)
    static_groups: bool = False  # group (scale, zero) from the original weights up front, not the error-updated ones

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
                lin.weight.detach(),
                stats[name].hessian,
                self.bits,
                G,
                damp=self.damp,
                block_size=self.block_size,
                act_order=self.act_order,
                symmetric=self.symmetric,
                static_groups=self.static_groups,
            )
            qw = QuantizedWeight.from_codes(codes, scale, zero, self.bits, (1, G), "int")
            install_quantized(ctx.model, name, lin, qw, self.storage, report)
