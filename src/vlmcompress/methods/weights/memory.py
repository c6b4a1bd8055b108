"""Weight bytes: counted from the tensors held, and from the analytic formula, side by side.

Quantized layer, analytic (bits, exact fractions, rounded up to bytes once per layer):
    codes ``out·in·b`` + per block a 16-bit scale + a zero (16 bits for a float zero,
    ``b`` bits for an integer zero) + outliers ``nnz·(16 + 32)`` (fp16 value, int32
    column index) + ``(out + 1)·32`` CSR row pointers when the layer has outliers.
    e.g. 2-bit, G=128, fp16 scale and zero: ``2 + 32/128 = 2.25`` bits per weight.
Counted: the bytes of the packed tensors (:meth:`QuantizedWeight.nbytes`); the two
differ only by the padding of the last packed byte of a row.

Pruned layer: dense storage is what is held (pruning alone does not shrink a dense
tensor), so the counted bytes stay dense; the analytic figure is a sparse format's:
N:M keeps ``N/M`` of the values plus ``ceil(log2(C(M,N)))`` bits of metadata per group
of M (2:4: 3 bits, NVIDIA's format stores 4), unstructured keeps ``nnz`` values and a
1-bit-per-weight bitmap.
Everything the method did not touch is counted as held (embeddings, norms, vision
tower, ...), each storage once (tied embeddings are not counted twice).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ...footprint import model_weight_bytes


def quant_bits_analytic(out_f: int, in_f: int, bits: int, block_size: tuple[int, int], zero_point: str, nnz: int = 0) -> int:
    n_blocks = (out_f // block_size[0]) * (in_f // block_size[1])
    zero_bits = 16 if zero_point == "float" else bits
    total = out_f * in_f * bits + n_blocks * (16 + zero_bits)
    if nnz:
        total += nnz * (16 + 32) + (out_f + 1) * 32
    return total


def sparse_bits_analytic(weight: torch.Tensor, n_m: tuple[int, int] | None) -> int:
    value_bits = weight.element_size() * 8
    if n_m is not None:
        n, m = n_m
        groups = weight.numel() // m
        return groups * (n * value_bits + math.ceil(math.log2(math.comb(m, n))))
    nnz = int((weight != 0).sum())
    return nnz * value_bits + weight.numel()


@dataclass
class MemoryReport:
    """Collects, layer by layer, the dense bytes replaced and the bytes that replace them."""

    dense_before: int = 0  # bytes the compressed layers' weights held before
    counted: int = 0  # bytes of their compressed tensors
    analytic_bits: int = 0
    layers: int = 0
    zeros: int = 0
    numel: int = 0
    notes: dict = field(default_factory=dict)

    def add_quantized(self, weight: torch.Tensor, counted_bytes: int, analytic_bits: int) -> None:
        self.dense_before += weight.numel() * weight.element_size()
        self.counted += counted_bytes
        self.analytic_bits += analytic_bits
        self.layers += 1
        self.numel += weight.numel()

    def add_pruned(self, weight: torch.Tensor, n_m: tuple[int, int] | None) -> None:
        dense = weight.numel() * weight.element_size()
        self.dense_before += dense
        self.counted += dense
        self.analytic_bits += sparse_bits_analytic(weight, n_m)
        self.layers += 1
        self.zeros += int((weight == 0).sum())
        self.numel += weight.numel()

    def summary(self, model: nn.Module, storage: str, original_total: int) -> dict:
        """``efficiency`` entries.  ``original_total``: the model's bytes before compression."""
        held = model_weight_bytes(model)
        rest = original_total - self.dense_before
        if storage == "packed":
            weight_bytes = held  # measured: the model now holds the packed tensors
        else:
            weight_bytes = rest + self.counted
        out = {
            "weight_storage": storage,
            "weight_bytes": int(weight_bytes),
            "weight_bytes_analytic": int(rest + math.ceil(self.analytic_bits / 8)),
            "weight_bytes_in_memory": int(held),
            "weight_bytes_original": int(original_total),
            "compressed_layers": self.layers,
        }
        if self.numel and self.layers:
            out["compressed_params"] = self.numel
            out["bits_per_weight"] = self.analytic_bits / self.numel
        if storage == "dense":
            out["weight_sparsity"] = self.zeros / max(self.numel, 1)
        out.update(self.notes)
        return out
