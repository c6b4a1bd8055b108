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

Every dense floating-point weight (untouched layers, the dense weight a quantized layer
replaced, a pruned layer's dense storage, a sparse format's values) is counted at the
model's reference dtype (:func:`~vlmcompress.footprint.reference_dtype`: the checkpoint's
16-bit dtype), not at the dtype a CPU run computes in, so ratios are the ones a GPU user
sees.  Packed storages are counted as held (uint8 codes, fp16 scales/zeros/outliers,
int32 indices).  ``weight_bytes_in_memory`` is what the process really holds
(:func:`~vlmcompress.footprint.held_weight_bytes`, e.g. float32 dense layers on a CPU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ...footprint import dtype_bytes, held_weight_bytes, reference_dtype


def quant_bits_analytic(out_f: int, in_f: int, bits: int, block_size: tuple[int, int], zero_point: str, nnz: int = 0) -> int:
    n_blocks = (out_f // block_size[0]) * (in_f // block_size[1])
    zero_bits = 16 if zero_point == "float" else bits
    total = out_f * in_f * bits + n_blocks * (16 + zero_bits)
    if nnz:
        total += nnz * (16 + 32) + (out_f + 1) * 32
    return total


def sparse_bits_analytic(weight: torch.Tensor, n_m: tuple[int, int] | None, value_bits: int | None = None) -> int:
    """Bits of a sparse format holding ``weight``'s non-zeros at ``value_bits`` a value
    (default: the tensor's own element width)."""
    kept, meta = _sparse_parts(weight, n_m)
    return kept * (value_bits if value_bits is not None else weight.element_size() * 8) + meta


def _sparse_parts(weight: torch.Tensor, n_m: tuple[int, int] | None) -> tuple[int, int]:
    """(values kept, metadata bits) of a sparse format holding ``weight``."""
    if n_m is not None:
        n, m = n_m
        groups = weight.numel() // m
        return groups * n, groups * math.ceil(math.log2(math.comb(m, n)))
    return int((weight != 0).sum()), weight.numel()


@dataclass
class MemoryReport:
    """Collects, layer by layer, the dense weights replaced and what replaces them.  Byte
    figures that depend on the dense dtype are resolved in :meth:`summary`, at the model's
    reference dtype."""

    quant_numel: int = 0  # weights of the quantized layers
    quant_counted: int = 0  # bytes of their packed tensors (measured)
    quant_analytic_bits: int = 0
    pruned_numel: int = 0  # weights of the pruned layers (held dense)
    pruned_kept: int = 0  # values a sparse format keeps
    pruned_meta_bits: int = 0  # its metadata (N:M indices, or a bitmap)
    layers: int = 0
    zeros: int = 0
    notes: dict = field(default_factory=dict)

    @property
    def numel(self) -> int:
        return self.quant_numel + self.pruned_numel

    def add_quantized(self, weight: torch.Tensor, counted_bytes: int, analytic_bits: int) -> None:
        self.quant_numel += weight.numel()
        self.quant_counted += counted_bytes
        self.quant_analytic_bits += analytic_bits
        self.layers += 1

    def add_pruned(self, weight: torch.Tensor, n_m: tuple[int, int] | None) -> None:
        kept, meta = _sparse_parts(weight, n_m)
        self.pruned_numel += weight.numel()
        self.pruned_kept += kept
        self.pruned_meta_bits += meta
        self.layers += 1
        self.zeros += int((weight == 0).sum())

    def dense_before(self, element_bytes: int) -> int:
        """Bytes the compressed layers' weights held before, at ``element_bytes`` a weight."""
        return self.numel * element_bytes

    def counted(self, element_bytes: int) -> int:
        """Bytes of what replaced them: packed tensors as held, pruned layers dense."""
        return self.quant_counted + self.pruned_numel * element_bytes

    def analytic_bits(self, element_bytes: int) -> int:
        return self.quant_analytic_bits + self.pruned_kept * element_bytes * 8 + self.pruned_meta_bits

    def summary(self, model: nn.Module, storage: str, original_total: int) -> dict:
        """``efficiency`` entries.  ``original_total``: the model's weight bytes before
        compression, as :func:`~vlmcompress.footprint.model_weight_bytes` reports them."""
        ref = reference_dtype(model)
        size = dtype_bytes(ref)
        rest = original_total - self.dense_before(size)
        # the stored format's bytes (packed codes, fp16 scales, zeros); what the process holds
        # (a kernel's own layout included) is weight_bytes_in_memory
        weight_bytes = rest + self.counted(size)
        analytic_bits = self.analytic_bits(size)
        out = {
            "weight_storage": storage,
            "weight_bytes": int(weight_bytes),
            "weight_bytes_analytic": int(rest + math.ceil(analytic_bits / 8)),
            "weight_bytes_in_memory": int(held_weight_bytes(model)),
            "weight_bytes_original": int(original_total),
            "compressed_layers": self.layers,
        }
        if self.numel and self.layers:
            out["compressed_params"] = self.numel
            out["bits_per_weight"] = analytic_bits / self.numel
        if storage == "packed":
            from .kernels import weight_kernels

            out["weight_kernel"] = ", ".join(f"{name} ({n} layers)" for name, n in sorted(weight_kernels(model).items()))
        if storage == "dense":
            out["weight_sparsity"] = self.zeros / max(self.numel, 1)
        out.update(self.notes)
        return out
