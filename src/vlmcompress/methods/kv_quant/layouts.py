"""Pure tensor functions of KV-cache quantization: one function per layout, no model plumbing.

Keys and values are ``[B, H, T, D]`` (batch, KV heads, tokens, head channels).  Every layout
is one ``block_size`` of the shared block-wise affine primitive
(:mod:`vlmcompress.quant.affine`), with a float zero point (the block minimum, as KIVI and
quanto store it) and scale and zero kept in fp16:

===========  =========================  ==================================================
layout        block of one (scale, zero)  label in LVLM-Compress-Bench
===========  =========================  ==================================================
``tensor``    ``(1, H, T, D)``: the whole  ``u`` (uniform) and ``o`` (outlier, on the inliers)
              layer tensor of one sample
``channel``   ``(1, 1, G, 1)``: G          ``KC{G}`` / ``VC{G}`` (KIVI's keys)
              consecutive tokens of one
              channel
``token``     ``(1, 1, 1, G)``: G          ``KT{G}`` / ``VT{G}`` (KIVI's values)
              consecutive channels of one
              token
===========  =========================  ==================================================

Codes are packed along the channel dim ``D`` for every layout (one token's codes are
contiguous bytes), so that a growing cache appends along the token dim without re-packing;
the byte count is the same as packing along tokens whenever ``D * bits`` is a multiple of 8
(KIVI packs keys along tokens inside int32 words: same bits, another order).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

import torch

from ...quant.affine import dequantize, quantize, quantize_affine
from ...quant.packing import pack, unpack

Kind = Literal["tensor", "channel", "token"]
KINDS: tuple[str, ...] = ("tensor", "channel", "token")
AXES: tuple[str, ...] = ("channel", "token")
KV_BITS: tuple[int, ...] = (2, 3, 4, 8)
PARAM_DTYPE = torch.float16  # scale and zero: 16 bits each, as the papers count them
INDEX_DTYPE = torch.int32  # flat position of an fp16 outlier inside one sample's layer tensor

__all__ = [
    "AXES",
    "KINDS",
    "KV_BITS",
    "KVLayout",
    "QuantizedKV",
    "dequantize_kv",
    "dequantize_kv_into",
    "n_outliers",
    "parse_label",
    "quantize_kv",
    "quantize_kv_with",
    "split_outliers",
]


@dataclass(frozen=True)
class KVLayout:
    """How one of keys/values is cut into quantization blocks.

    ``group``: tokens per block for ``channel``, channels per block for ``token``; unused
    for ``tensor``.
    """

    kind: Kind
    bits: int
    group: int = 0

    def block_size(self, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        _, h, t, d = shape
        if self.kind == "tensor":
            return (1, h, t, d)
        if self.kind == "channel":
            return (1, 1, self.group, 1)
        if self.kind == "token":
            return (1, 1, 1, self.group)
        raise ValueError(f"unknown layout kind {self.kind!r}; allowed: {', '.join(KINDS)}")

    @property
    def token_unit(self) -> int:
        """Smallest number of tokens that can be quantized on their own (a channel group
        needs all its G tokens; a token group or a fixed tensor range needs one token)."""
        return self.group if self.kind == "channel" else 1


@dataclass
class QuantizedKV:
    """Packed codes ``[B, H, T, packed_length(D)]`` uint8, with fp16 ``scale``/``zero`` of
    shape ``[B, H, T, D] / block_size`` and the unpacked width ``head_dim``."""

    packed: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    head_dim: int

    @property
    def shape(self) -> tuple[int, int, int, int]:
        b, h, t, _ = self.packed.shape
        return (b, h, t, self.head_dim)

    def codes(self, bits: int) -> torch.Tensor:
        return unpack(self.packed, bits, self.head_dim)


def _check(x: torch.Tensor, layout: KVLayout) -> None:
    if x.dim() != 4:
        raise ValueError(f"keys/values must be [B, H, T, D]; got shape {tuple(x.shape)}")
    if layout.kind == "channel" and x.shape[2] % layout.group:
        raise ValueError(f"per-channel groups of {layout.group} tokens need a multiple of {layout.group} tokens; got {x.shape[2]}")
    if layout.kind == "token" and x.shape[3] % layout.group:
        raise ValueError(f"per-token groups of {layout.group} channels need head_dim divisible by {layout.group}; got {x.shape[3]}")


def quantize_kv(x: torch.Tensor, layout: KVLayout) -> QuantizedKV:
    """Choose per-block (scale, zero) from ``x`` itself and quantize; every block lies inside
    one sample (the batch dim is always a block extent of 1)."""
    _check(x, layout)
    codes, scale, zero = quantize_affine(x, layout.bits, layout.block_size(tuple(x.shape)), zero_point="float", param_dtype=PARAM_DTYPE)
    return QuantizedKV(pack(codes, layout.bits), scale, zero, x.shape[-1])


def quantize_kv_with(x: torch.Tensor, layout: KVLayout, scale: torch.Tensor, zero: torch.Tensor) -> QuantizedKV:
    """Quantize ``x`` against given per-sample ``tensor`` parameters ``[B, 1, 1, 1]`` (decode
    tokens of ``kv_uniform``/``kv_outlier``: the range fixed at prefill, values outside it clamp)."""
    if layout.kind != "tensor":
        raise ValueError("fixed parameters are only used by the 'tensor' layout")
    _check(x, layout)
    codes = quantize(x, scale, zero, layout.bits, layout.block_size(tuple(x.shape)), "float")
    return QuantizedKV(pack(codes, layout.bits), scale, zero, x.shape[-1])


def dequantize_kv(q: QuantizedKV, layout: KVLayout, dtype: torch.dtype) -> torch.Tensor:
    """The reference read-back: unpack the codes, then the shared primitive's ``q*scale + zero``."""
    codes = q.codes(layout.bits)
    return dequantize(codes, q.scale, q.zero, layout.bits, layout.block_size(tuple(codes.shape)), "float", dtype=dtype)


def dequantize_kv_into(q: QuantizedKV, layout: KVLayout, out: torch.Tensor) -> torch.Tensor:
    """Write :func:`dequantize_kv` ``(q, layout, out.dtype)`` into ``out`` (``[B, H, T, D]``, a view
    of the buffer attention will read), bit for bit the same values.

    Why a second path: a decode step reads the whole cache back, so this is the cache's hot
    loop.  The reference unpacks through int32 words and allocates each intermediate (about ten
    passes over the tokens); here each code position of a byte is shifted and masked in uint8
    and written straight into its strided slot of the float output, then scaled and shifted in
    place with the same float32 arithmetic (a multiply, then an add: no fused multiply-add that
    would round differently).  Three passes, no temporaries beyond one byte-sized tensor.
    Falls back to the reference for 3-bit codes, a head_dim that is not a whole number of
    bytes, float64 parameters, or an ``out`` whose last dim is not contiguous.
    """
    bits = layout.bits
    codes_per = 8 // bits if bits in (2, 4, 8) else 0
    b, h, t, d = q.shape
    if tuple(out.shape) != (b, h, t, d):
        raise ValueError(f"out has shape {tuple(out.shape)}; the codes read back to {(b, h, t, d)}")
    fast = codes_per and d % codes_per == 0 and q.scale.dtype != torch.float64 and out.dtype != torch.float64 and out.stride(-1) == 1
    if not fast:
        out.copy_(dequantize_kv(q, layout, out.dtype))
        return out
    work = out if out.dtype == torch.float32 else torch.empty(out.shape, dtype=torch.float32, device=out.device)
    per_byte = work.view(b, h, t, d // codes_per, codes_per)
    mask = (1 << bits) - 1
    for i in range(codes_per):
        per_byte[..., i].copy_(q.packed if bits == 8 else (q.packed >> (i * bits)) & mask)
    scale, zero = q.scale.to(torch.float32), q.zero.to(torch.float32)
    if layout.kind == "channel":  # one (scale, zero) per G consecutive tokens of a channel
        g = layout.group
        blocks = work.view(b, h, t // g, g, d)
        blocks.mul_(scale.unsqueeze(3)).add_(zero.unsqueeze(3))
    elif layout.kind == "token":  # one per G consecutive channels of a token
        g = layout.group
        blocks = work.view(b, h, t, d // g, g)
        blocks.mul_(scale.unsqueeze(-1)).add_(zero.unsqueeze(-1))
    else:  # one per sample
        work.mul_(scale).add_(zero)
    if work is not out:
        out.copy_(work)
    return out


# --------------------------------------------------------------------------- outliers


def n_outliers(numel: int, frac: float) -> int:
    """Values kept in fp16 out of ``numel`` (round half up, so the count is reproducible)."""
    return min(numel, int(math.floor(frac * numel + 0.5)))


def split_outliers(x: torch.Tensor, frac: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """GEAR's dense+sparse split, per sample: the ``k//2`` smallest and ``k - k//2`` largest
    *signed* values of each sample's ``[H, T, D]`` (``k = n_outliers(H*T*D, frac)``) are
    outliers; the inliers' min and max give that sample's range.

    Returns ``(flat_idx [B, k] int64 into [H, T, D] row-major, values [B, k], lo [B], hi [B])``.
    """
    b = x.shape[0]
    flat = x.reshape(b, -1)
    k = n_outliers(flat.shape[1], frac)
    k_lo = k // 2
    k_hi = k - k_lo
    idx_hi = torch.topk(flat, k_hi, dim=1, largest=True, sorted=True).indices
    idx_lo = torch.topk(flat, k_lo, dim=1, largest=False, sorted=True).indices
    idx = torch.cat([idx_hi, idx_lo], dim=1)
    out_mask = torch.zeros_like(flat, dtype=torch.bool)
    out_mask.scatter_(1, idx, True)
    if k == flat.shape[1]:  # everything is an outlier: any range will do
        lo = torch.zeros(b, dtype=flat.dtype, device=flat.device)
        hi = lo.clone()
    else:
        lo = torch.where(out_mask, torch.full_like(flat, float("inf")), flat).amin(dim=1)
        hi = torch.where(out_mask, torch.full_like(flat, float("-inf")), flat).amax(dim=1)
    return idx, flat.gather(1, idx), lo, hi


def range_params(lo: torch.Tensor, hi: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """fp16 ``(scale, zero)`` ``[B, 1, 1, 1]`` of a per-sample range (the primitive's formula
    and its constant-block guard, applied to a range that excludes the outliers)."""
    scale = ((hi.float() - lo.float()) / (2**bits - 1)).to(PARAM_DTYPE)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return scale.reshape(-1, 1, 1, 1), lo.to(PARAM_DTYPE).reshape(-1, 1, 1, 1)


# --------------------------------------------------------------------------- labels

_LABEL = re.compile(r"^\s*([uog])-K([CT])(\d+)V([CT])(\d+)\s*$", re.I)


def parse_label(label: str) -> tuple[str, str, int, str, int]:
    """LVLM-Compress-Bench label -> ``(family, k_axis, k_group, v_axis, v_group)``.

    ``g-KC128VT128``: group quantization, keys per-Channel (a group is 128 consecutive tokens
    of one channel), values per-Token (a group is 128 consecutive channels of one token).
    """
    m = _LABEL.match(label or "")
    if not m:
        raise ValueError(f"label {label!r} is not of the form {{u|o|g}}-K{{C|T}}<G>V{{C|T}}<G>, e.g. g-KC128VT128")
    axis = {"C": "channel", "T": "token"}
    fam, ka, kg, va, vg = m.groups()
    return fam.lower(), axis[ka.upper()], int(kg), axis[va.upper()], int(vg)
