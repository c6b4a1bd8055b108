"""A quantized weight as it is stored, and a Linear that keeps it packed.

:class:`QuantizedWeight` is the storage every weight quantizer produces: codes packed
b bits each along the input dim (:func:`vlmcompress.quant.pack`), one fp16 scale per
block, one zero per block (fp16 for the float convention; for the integer convention
the zero is itself a b-bit code, packed the same way, as AutoAWQ packs ``qzeros``), and
optionally fp16 outliers held as a sparse CSR matrix (int32 indices).  Its
:meth:`~QuantizedWeight.nbytes` counts those tensors, so the figure is exact.

``storage="simulated"`` builds it, counts it and writes the dequantized weight back
into the ordinary Linear (fast: the forward is a plain matmul).  ``storage="packed"``
swaps the Linear for :class:`PackedLinear`, which holds only the packed tensors and
dequantizes on the fly in ``forward``, so the model's measured bytes drop.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn

from ...quant import dequantize, pack, unpack

PARAM_DTYPE = torch.float16  # scales, float zeros and outlier values are stored in fp16


@dataclass
class QuantizedWeight:
    qweight: torch.Tensor  # uint8 [out, packed_length(in, bits)]
    scale: torch.Tensor  # fp16 [out / block[0], in / block[1]]
    zero: torch.Tensor  # fp16 (float zero) or packed uint8 codes (int zero)
    bits: int
    block_size: tuple[int, int]
    zero_point: str
    shape: tuple[int, int]
    outliers: torch.Tensor | None = None  # sparse CSR fp16, same shape as the weight

    @classmethod
    def from_codes(cls, codes, scale, zero, bits, block_size, zero_point, outliers=None) -> "QuantizedWeight":
        scale = scale.to(PARAM_DTYPE)
        if zero_point == "int":
            zero = pack(zero.round().to(torch.uint8), bits)
        else:
            zero = zero.to(PARAM_DTYPE)
        return cls(pack(codes, bits), scale, zero, bits, tuple(block_size), zero_point, tuple(codes.shape), outliers)

    def zero_values(self) -> torch.Tensor:
        if self.zero_point == "int":
            return unpack(self.zero, self.bits, self.scale.shape[-1]).to(torch.float32)
        return self.zero

    def codes(self) -> torch.Tensor:
        """The unpacked b-bit codes, uint8 ``[out, in]``."""
        return unpack(self.qweight, self.bits, self.shape[-1])

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        codes = self.codes()
        w = dequantize(codes, self.scale, self.zero_values(), self.bits, self.block_size, self.zero_point, dtype=torch.float32)
        if self.outliers is not None:
            dense = self.outliers.to_dense().float()
            w = torch.where(dense != 0, dense, w)
        return w.to(dtype)

    def tensors(self) -> list[torch.Tensor]:
        out = [self.qweight, self.scale, self.zero]
        if self.outliers is not None:
            out += [self.outliers.crow_indices(), self.outliers.col_indices(), self.outliers.values()]
        return out

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())


def sparse_outliers(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The masked entries of ``weight`` as an fp16 CSR matrix with int32 indices.

    An outlier that is exactly 0.0 cannot be told apart from "no outlier" after
    ``to_dense``; it is stored as the smallest fp16 subnormal instead (a 6e-8 error).
    """
    vals = torch.where(mask, weight, torch.zeros_like(weight)).to(PARAM_DTYPE)
    tiny = torch.tensor(torch.finfo(PARAM_DTYPE).smallest_normal * 2**-10, dtype=PARAM_DTYPE, device=weight.device)
    vals = torch.where(mask & (vals == 0), tiny, vals)
    rows, cols = mask.nonzero(as_tuple=True)
    crow = torch.zeros(weight.shape[0] + 1, dtype=torch.int32, device=weight.device)
    crow[1:] = torch.bincount(rows, minlength=weight.shape[0]).cumsum(0).to(torch.int32)
    return _csr(crow, cols.to(torch.int32), vals[rows, cols], tuple(weight.shape))


def _csr(crow, col, val, size) -> torch.Tensor:
    with warnings.catch_warnings():  # "sparse CSR is beta" / invariant-check notices
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, val, size=size)


class PackedLinear(nn.Module):
    """A Linear whose weight is held packed and dequantized at every forward."""

    def __init__(self, qw: QuantizedWeight, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = qw.shape
        self.bits = qw.bits
        self.block_size = qw.block_size
        self.zero_point = qw.zero_point
        self.register_buffer("qweight", qw.qweight)
        self.register_buffer("scale", qw.scale)
        self.register_buffer("zero", qw.zero)
        self.has_outliers = qw.outliers is not None
        if qw.outliers is not None:
            self.register_buffer("outlier_crow", qw.outliers.crow_indices())
            self.register_buffer("outlier_col", qw.outliers.col_indices())
            self.register_buffer("outlier_val", qw.outliers.values())
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False) if bias is not None else None

    def quantized_weight(self) -> QuantizedWeight:
        outliers = None
        if self.has_outliers:
            outliers = _csr(self.outlier_crow, self.outlier_col, self.outlier_val, (self.out_features, self.in_features))
        return QuantizedWeight(self.qweight, self.scale, self.zero, self.bits, self.block_size, self.zero_point, (self.out_features, self.in_features), outliers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.quantized_weight().dequantize(x.dtype)
        return nn.functional.linear(x, w, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, block_size={self.block_size}, zero_point={self.zero_point}, outliers={self.has_outliers}"
