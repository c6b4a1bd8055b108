"""Packed 4-bit weights on a real low-bit matmul kernel.

``storage=packed`` holds quantized weights packed; :class:`PackedLinear` dequantizes the
whole weight in Python on every call.  Where torch has a kernel for the format, the layer
runs on it instead: :class:`Int4KernelLinear` holds the weight in the layout of
``aten._weight_int4pack_mm_for_cpu`` (4-bit codes, two per byte, "tinygemm" layout) and
multiplies without ever materialising the dense weight.

The kernel's dequantization is ``w = (q - 8) * scale + zero_k`` per group of ``G`` input
features.  Ours is ``w = (q - z) * scale`` (integer zero) or ``w = q * scale + z`` (float
zero), so ``zero_k = (8 - z) * scale`` or ``z + 8 * scale`` gives the same weight; scales and zeros are held in
bfloat16 and activations enter the kernel in bfloat16: that is its fast path (measured by
``benchmarks/packed_weights.py``: at [1, 2048] x [2048, 5632] it took 0.45 ms in bf16
against 11.5 ms in fp32 and 3.1 ms for the dense fp32 matmul), and the precision GPU
users run 4-bit weights at.  Outputs are cast back to the model's dtype.  Eligible: 4 bits, groups along the input
dimension of 32/64/128/256 features that divide it, no outliers, a CPU.  Everything else
(other bit widths, per-channel or 2-D blocks, outliers, GPUs: torchao's CUDA layouts are
not wired yet) stays on :class:`PackedLinear`; ``weight_kernel`` in the results says which.
"""

from __future__ import annotations

import torch
from torch import nn

from .packed import PackedLinear, QuantizedWeight

INT4_GROUP_SIZES = (32, 64, 128, 256)
INT4_CPU_KERNEL = "aten._weight_int4pack_mm_for_cpu (bf16 activations)"
KERNEL_DTYPE = torch.bfloat16
DEQUANTIZE = "dequantize+matmul"


def int4_kernel_fits(qw: QuantizedWeight, device: torch.device) -> bool:
    rows, group = qw.block_size
    return (
        device.type == "cpu"
        and qw.bits == 4
        and qw.outliers is None
        and rows == 1
        and group in INT4_GROUP_SIZES
        and qw.shape[1] % group == 0
        and hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")
    )


class Int4KernelLinear(nn.Module):
    """A Linear whose 4-bit weight lives in the int4pack layout and is multiplied by the
    kernel (see the module doc)."""

    kernel = INT4_CPU_KERNEL

    def __init__(self, qw: QuantizedWeight, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = qw.shape
        self.group_size = qw.block_size[1]
        codes = qw.codes().to(torch.int32)
        self.register_buffer("weight_int4pack", torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1))
        scale = qw.scale.float()  # [out, in / G]
        z = qw.zero_values().float()
        zero = z + 8.0 * scale if qw.zero_point == "float" else (8.0 - z) * scale
        # [in / G, out, 2]: the kernel's scales_and_zeros
        self.register_buffer("scales_and_zeros", torch.stack([scale.t(), zero.t()], dim=-1).contiguous().to(KERNEL_DTYPE))
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False) if bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(KERNEL_DTYPE).contiguous()
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.weight_int4pack, self.group_size, self.scales_and_zeros).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits=4, group_size={self.group_size}, kernel={self.kernel}"


def packed_module(qw: QuantizedWeight, bias: torch.Tensor | None, device: torch.device) -> nn.Module:
    """The module that holds ``qw`` packed: on a kernel where one fits, else dequantizing."""
    if int4_kernel_fits(qw, device):
        return Int4KernelLinear(qw, bias)
    return PackedLinear(qw, bias)


def weight_kernels(model: nn.Module) -> dict[str, int]:
    """How many packed layers run on which path (``weight_kernel`` in the results)."""
    counts: dict[str, int] = {}
    for m in model.modules():
        name = Int4KernelLinear.kernel if isinstance(m, Int4KernelLinear) else DEQUANTIZE if isinstance(m, PackedLinear) else None
        if name:
            counts[name] = counts.get(name, 0) + 1
    return counts
