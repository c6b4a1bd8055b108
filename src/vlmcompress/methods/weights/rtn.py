"""Round-to-nearest (RTN) uniform weight quantization."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ...quant import quantize_affine
from ..base import METHODS
from .common import GranularWeightQuantizer
from .packed import PARAM_DTYPE, QuantizedWeight


def rtn_quantize_weight(weight: torch.Tensor, bits: int, block_size: tuple[int, int], *, symmetric: bool = False, zero_point: str = "float") -> QuantizedWeight:
    """Quantize a ``[out, in]`` weight block-wise to nearest, scales and zeros in fp16."""
    w = weight.detach().float()
    codes, scale, zero = quantize_affine(w, bits, block_size, symmetric=symmetric, zero_point=zero_point, param_dtype=PARAM_DTYPE)
    return QuantizedWeight.from_codes(codes, scale, zero, bits, block_size, zero_point)


@METHODS.register
@dataclass
class RTN(GranularWeightQuantizer):
    """Round-to-nearest uniform quantization of Linear weights (no calibration data).

    One ``(min, max)`` per block: the whole tensor (``granularity=tensor``, GEAR's
    "uniform"), each output channel (``channel``), or each group of ``group_size``
    consecutive input columns of one output row (``group``, AutoAWQ's
    ``pseudo_quantize_tensor``; the usual baseline of GPTQ and AWQ, Frantar et al. 2023,
    Lin et al. 2024).  ``bits=16`` leaves the weights untouched.
    """

    name = "rtn"

    symmetric: bool = False  # symmetric around 0 (scale = max|w| / (2^(b-1)-1)) instead of min/max
    zero_point: Literal["float", "int"] = "float"  # float zero = block min (GEAR); int zero = code of 0.0 (AutoAWQ)

    def validate(self) -> None:
        super().validate()
        self.check_choice("zero_point", ("float", "int"))

    def quantize_weight(self, weight, block_size) -> QuantizedWeight:
        return rtn_quantize_weight(weight, self.bits, block_size, symmetric=self.symmetric, zero_point=self.zero_point)
