"""Packed 4-bit weights on torch's int4 CPU kernel: the same weight as the stored format
(checked against the dequantized weight computed independently), used only where it fits,
and said in the results."""

import pytest
import torch

from vlmcompress.methods.weights.kernels import DEQUANTIZE, INT4_CPU_KERNEL, Int4KernelLinear, int4_kernel_fits, packed_module
from vlmcompress.methods.weights.packed import PackedLinear, QuantizedWeight
from vlmcompress.models.llava import LlavaAdapter
from vlmcompress.models.tiny import tiny_llava

from test_weight_methods import _apply, _batches


def _quantized(out_f=48, in_f=256, group=64, zero_point="int", bits=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g)
    wg = w.view(out_f, in_f // group, group)
    lo, hi = wg.amin(-1), wg.amax(-1)
    scale = ((hi - lo) / (2**bits - 1)).half().float()
    zero = torch.round(-lo / scale) if zero_point == "int" else lo.half().float()
    if zero_point == "int":
        codes = torch.clamp(torch.round(wg / scale[..., None]) + zero[..., None], 0, 2**bits - 1)
    else:
        codes = torch.clamp(torch.round((wg - zero[..., None]) / scale[..., None]), 0, 2**bits - 1)
    qw = QuantizedWeight.from_codes(codes.view(out_f, in_f).to(torch.uint8), scale, zero, bits, (1, group), zero_point)
    return qw, codes, scale, zero


@pytest.mark.parametrize("zero_point", ["int", "float"])
@pytest.mark.parametrize("group", [32, 64, 128])
def test_kernel_multiplies_by_the_stored_weight(zero_point, group):
    qw, codes, scale, zero = _quantized(group=group, zero_point=zero_point)
    # the weight the format means, by hand: (q - z) * s for an int zero, q * s + z for a float one
    dense = ((codes - zero[..., None]) * scale[..., None]) if zero_point == "int" else (codes * scale[..., None] + zero[..., None])
    dense = dense.view(qw.shape).double()
    bias = torch.randn(qw.shape[0])
    layer = Int4KernelLinear(qw, bias)
    x = torch.randn(3, 5, qw.shape[1])
    y = layer(x)
    # the kernel reads bf16 activations and bf16 scales/zeros: the reference does the same
    # rounding in float64; what is left is the kernel's accumulation and bf16 output
    xb = x.bfloat16().double()
    s_b = scale.bfloat16().double()[..., None]
    if zero_point == "int":
        zk = ((8 - zero) * scale).bfloat16().double()[..., None]
    else:
        zk = (zero + 8 * scale).bfloat16().double()[..., None]
    dense_k = ((codes.double() - 8) * s_b + zk).view(qw.shape)
    ref = (xb @ dense_k.t() + bias.double()).float()
    assert y.shape == (3, 5, qw.shape[0]) and y.dtype == torch.float32
    torch.testing.assert_close(y, ref, rtol=1e-2, atol=2e-2)
    # and that is the stored weight, up to bf16 rounding of scales and zeros
    assert (dense_k - dense).abs().max() < 0.02 * dense.abs().max()
    assert (y - (x.double() @ dense.t() + bias.double()).float()).abs().max() < 0.03 * ref.abs().max()
    # held: half a byte a weight plus the kernel's scales and zeros, far below dense fp32
    held = sum(b.numel() * b.element_size() for b in layer.buffers())
    assert held < qw.shape[0] * qw.shape[1] * 4 / 4


def test_only_formats_the_kernel_computes_go_to_it():
    cpu = torch.device("cpu")
    assert int4_kernel_fits(_quantized()[0], cpu)
    assert not int4_kernel_fits(_quantized(bits=3)[0], cpu)
    assert not int4_kernel_fits(_quantized(group=16)[0], cpu)
    assert not int4_kernel_fits(_quantized()[0], torch.device("meta"))
    assert isinstance(packed_module(_quantized(bits=3)[0], None, cpu), PackedLinear)


def test_packed_rtn_on_the_kernel_matches_simulated_and_says_so():
    sim, adapter, ctx_sim = _apply(tiny_llava, LlavaAdapter, "rtn(bits=4,group_size=32)")
    packed, _, ctx_p = _apply(tiny_llava, LlavaAdapter, "rtn(bits=4,group_size=32,storage=packed)")
    assert any(isinstance(m, Int4KernelLinear) for m in packed.modules())
    assert not any(isinstance(m, PackedLinear) for m in packed.modules())
    assert ctx_p.info["weight_kernel"].startswith(INT4_CPU_KERNEL)
    batch = _batches(adapter, 2, seed=3)[0]
    with torch.no_grad():
        a, b = packed(**batch).logits, sim(**batch).logits
    assert (a - b).abs().max() < 0.05 * b.abs().max()  # bf16 activations in the kernel
    assert ctx_p.info["weight_bytes"] == ctx_sim.info["weight_bytes"]
    assert ctx_p.info["weight_bytes_in_memory"] < ctx_sim.info["weight_bytes_in_memory"]


def test_formats_without_a_kernel_say_they_dequantize():
    _, _, ctx = _apply(tiny_llava, LlavaAdapter, "rtn(bits=3,group_size=32,storage=packed)")
    assert ctx.info["weight_kernel"].startswith(DEQUANTIZE)
