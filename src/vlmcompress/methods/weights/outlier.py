"""Outlier-aware quantization: a few extreme weights in fp16 (sparse), the rest quantized."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ...quant import choose_qparams, quantize
from ..base import METHODS
from .common import GranularWeightQuantizer
from .packed import PARAM_DTYPE, QuantizedWeight, sparse_outliers


def outlier_mask(weight: torch.Tensor, frac: float, mode: str = "magnitude") -> torch.Tensor:
    """``True`` = kept in full precision: the ``round(frac · numel)`` largest ``|w|``
    (``magnitude``), or half of them among the largest and half among the smallest
    signed values (``signed``, GEAR's variant)."""
    w = weight.detach().float().flatten()
    k = int(round(frac * w.numel()))
    mask = torch.zeros_like(w, dtype=torch.bool)
    if k:
        if mode == "magnitude":
            mask[torch.topk(w.abs(), k).indices] = True
        else:
            hi = k - k // 2
            mask[torch.topk(w, hi).indices] = True
            if k // 2:
                mask[torch.topk(-w, k // 2).indices] = True
    return mask.view_as(weight)


def outlier_quantize_weight(weight: torch.Tensor, bits: int, block_size: tuple[int, int], frac: float, mode: str = "magnitude", zero_point: str = "float") -> QuantizedWeight:
    """Outliers to an fp16 CSR matrix; the inliers quantized with their own (min, max)
    per block, so one extreme value no longer stretches its block's step."""
    w = weight.detach().float()
    mask = outlier_mask(w, frac, mode)
    scale, zero = choose_qparams(w, bits, block_size, zero_point=zero_point, exclude=mask)
    scale = scale.to(PARAM_DTYPE)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = zero.to(PARAM_DTYPE) if zero_point == "float" else zero
    codes = quantize(w, scale, zero, bits, block_size, zero_point)
    return QuantizedWeight.from_codes(codes, scale, zero, bits, block_size, zero_point, outliers=sparse_outliers(w, mask) if mask.any() else None)


@METHODS.register
@dataclass
class Outlier(GranularWeightQuantizer):
    """Dense-and-sparse outlier quantization (the "outlier" scheme of GEAR, Kang et al.
    2024, as LVLM-Compress-Bench applies it; the idea of SpQR, Dettmers et al. 2024):
    the ``outlier_frac`` largest-magnitude weights of each layer are kept exactly in
    fp16 as a sparse CSR matrix (values + int32 indices, counted in the bytes), the
    rest are quantized round-to-nearest with the range of the inliers only."""

    name = "outlier"

    outlier_frac: float = 0.01  # fraction of each layer's weights kept in fp16, 0.01-0.10
    mode: Literal["magnitude", "signed"] = "magnitude"  # largest |w|, or half largest + half smallest signed
    granularity: Literal["tensor", "channel", "group"] = "channel"  # what one (scale, zero) of the inliers covers

    def validate(self) -> None:
        super().validate()
        self.check_range("outlier_frac", 0.0, 0.10)
        self.check_choice("mode", ("magnitude", "signed"))

    def quantize_weight(self, weight, block_size) -> QuantizedWeight:
        return outlier_quantize_weight(weight, self.bits, block_size, self.outlier_frac, self.mode)
