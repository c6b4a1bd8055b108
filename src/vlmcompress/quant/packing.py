"""Pack b-bit codes densely into ``uint8`` along the last dim, and back.

Layout: codes are taken in groups of ``g = lcm(b, 8) / b`` consecutive codes along the
last dim (2 bits: 4 codes; 3 bits: 8 codes; 4 bits: 2 codes; 8 bits: 1 code); a group is
read as one little-endian integer (code ``i`` of the group in bits ``[i*b, (i+1)*b)``)
and written as ``lcm(b, 8) / 8`` bytes, low byte first (3 bits: 8 codes -> 3 bytes, no
bit wasted).  The last dim is zero-padded up to a multiple of ``g``; :func:`unpack`
needs the true ``length`` to drop the padding.

For 2 and 4 bits this is the usual "code i in bits i*b" layout (KIVI and AutoAWQ use the
same idea inside int32 words; their in-word order differs and does not matter here).
"""

from __future__ import annotations

import math

import torch

PACK_BITS: tuple[int, ...] = (2, 3, 4, 8)

__all__ = ["PACK_BITS", "pack", "packed_length", "unpack"]


def _layout(bits: int) -> tuple[int, int]:
    if bits not in PACK_BITS:
        raise ValueError(f"bits={bits} cannot be packed; allowed: {', '.join(map(str, PACK_BITS))}")
    lcm = bits * 8 // math.gcd(bits, 8)
    return lcm // bits, lcm // 8  # codes per group, bytes per group


def packed_length(length: int, bits: int) -> int:
    """Bytes that ``length`` codes of ``bits`` bits take along the last dim."""
    codes_per, bytes_per = _layout(bits)
    return -(-length // codes_per) * bytes_per


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """``[..., n]`` codes (any integer dtype, values in ``[0, 2^bits)``) -> ``[..., packed_length(n)]`` uint8."""
    codes_per, bytes_per = _layout(bits)
    if codes.dtype.is_floating_point:
        raise TypeError("pack expects integer codes")
    if bits == 8:
        return codes.to(torch.uint8).contiguous()
    n = codes.shape[-1]
    pad = (-n) % codes_per
    if bytes_per == 1:  # 2 and 4 bits: a group is one byte, built with uint8 shifts (no int32 pass)
        c = codes.to(torch.uint8)
        if pad:
            c = torch.nn.functional.pad(c, (0, pad))
        c = c.reshape(*c.shape[:-1], -1, codes_per)
        out = c[..., 0].clone()
        for i in range(1, codes_per):
            out |= c[..., i] << (i * bits)
        return out
    c = codes.to(torch.int32)
    if pad:
        c = torch.nn.functional.pad(c, (0, pad))
    c = c.reshape(*c.shape[:-1], -1, codes_per)
    shifts = torch.arange(codes_per, dtype=torch.int32, device=c.device) * bits
    word = (c << shifts).sum(dim=-1, dtype=torch.int32)  # at most 24 bits: fits int32
    byte_shifts = torch.arange(bytes_per, dtype=torch.int32, device=c.device) * 8
    out = (word.unsqueeze(-1) >> byte_shifts) & 0xFF
    return out.reshape(*codes.shape[:-1], -1).to(torch.uint8)


def unpack(packed: torch.Tensor, bits: int, length: int) -> torch.Tensor:
    """Inverse of :func:`pack`: ``[..., packed_length(length)]`` uint8 -> ``[..., length]`` uint8 codes."""
    codes_per, bytes_per = _layout(bits)
    if packed.shape[-1] != packed_length(length, bits):
        raise ValueError(f"{packed.shape[-1]} bytes cannot hold exactly {length} codes of {bits} bits")
    if bits == 8:
        return packed.to(torch.uint8)
    if bytes_per == 1:  # 2 and 4 bits: each code position of a byte, shifted and masked in uint8
        mask = (1 << bits) - 1
        codes = torch.empty(*packed.shape, codes_per, dtype=torch.uint8, device=packed.device)
        for i in range(codes_per):
            torch.bitwise_and(packed >> (i * bits), mask, out=codes[..., i])
        return codes.reshape(*packed.shape[:-1], -1)[..., :length]
    p = packed.to(torch.int32).reshape(*packed.shape[:-1], -1, bytes_per)
    byte_shifts = torch.arange(bytes_per, dtype=torch.int32, device=p.device) * 8
    word = (p << byte_shifts).sum(dim=-1, dtype=torch.int32)
    shifts = torch.arange(codes_per, dtype=torch.int32, device=p.device) * bits
    codes = (word.unsqueeze(-1) >> shifts) & (2**bits - 1)
    codes = codes.reshape(*packed.shape[:-1], -1)[..., :length]
    return codes.to(torch.uint8)
