"""What every weight method shares: target selection, up-front checks against the model,
the calibration pass, installing the result (simulated or packed) and the byte count.

A method subclasses :class:`WeightQuantizer` or :class:`WeightPruner` and supplies the
per-group work (``process``); everything else (and the order: check every knob against
every target layer *before* any weight changes) is here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from ...errors import ConfigError
from ...footprint import model_weight_bytes
from ...quant import block_size_for
from ..base import CompressionContext, CompressionMethod
from .calibration import BlockRun, InputStats, SequentialPass, StatKinds, calibration_batches
from .memory import MemoryReport, quant_bits_analytic
from .kernels import packed_module
from .packed import QuantizedWeight
from .targets import block_index_of, parse_targets, select_linears, set_module

QUANT_BITS = (2, 3, 4, 8, 16)  # 16 = leave the weights as they are (the no-op check)
STORAGES = ("simulated", "packed")


class WeightMethod(CompressionMethod):
    """Base of the weight methods (not registered itself).  Its subclasses' knob bases
    (:class:`WeightQuantizer`, :class:`~.pruning.WeightPruner`) declare ``targets``."""

    hook: ClassVar[str] = "weights"
    needs_calibration: ClassVar[bool] = False
    stat_kinds: ClassVar[StatKinds] = StatKinds()
    storage_kind: ClassVar[str] = "simulated"
    targets: str  # a knob: declared (with its default) by the knob bases below

    def validate(self) -> None:
        parse_targets(self.targets)

    # ---------------------------------------------------------------- subclass hooks
    def check_layers(self, linears: dict[str, nn.Linear]) -> None:
        """Raise ConfigError if a knob does not fit a target layer (before any work)."""

    def is_noop(self) -> bool:
        return False

    def process(self, ctx: CompressionContext, linears: dict[str, nn.Linear], stats: dict[str, InputStats] | None, block: BlockRun | None, report: MemoryReport) -> None:
        raise NotImplementedError

    def storage_mode(self) -> str:
        return self.storage_kind

    def check_model(self, ctx: CompressionContext) -> None:
        self.check_layers(select_linears(ctx.model, ctx.adapter, self.targets))

    # ---------------------------------------------------------------- driver
    def prepare(self, ctx: CompressionContext) -> None:
        model = ctx.model
        targets = select_linears(model, ctx.adapter, self.targets)
        original = model_weight_bytes(model)
        report = MemoryReport()
        if self.is_noop():
            ctx.info.update(report.summary(model, self.storage_mode(), original))
            return
        self.check_layers(targets)  # before any weight is touched
        started = time.perf_counter()
        if self.needs_calibration:
            batches, info = calibration_batches(ctx)
            self.before_pass(ctx, targets, batches, report)
            SequentialPass(model, ctx.adapter, batches).run(
                targets, block_index_of(model, ctx.adapter), self.stat_kinds, lambda lin, st, blk: self.process(ctx, lin, st, blk, report)
            )
            info["calibration_s"] = time.perf_counter() - started
            ctx.info.update(info)
        else:
            with torch.no_grad():
                self.process(ctx, targets, None, None, report)
        ctx.info["compress_s"] = time.perf_counter() - started
        ctx.info.update(report.summary(model, self.storage_mode(), original))

    def before_pass(self, ctx, targets, batches, report) -> None:
        """Work done once before the block-by-block pass (ECoFLaP's layer scores)."""


@dataclass
class WeightQuantizer(WeightMethod):
    """Base of the weight quantizers (rtn, outlier, awq, gptq; not registered itself):
    the knobs that mean the same in each, declared and checked here once."""

    family: ClassVar[str | None] = "weight_quantization"

    bits: int = 4  # code width: 2, 3, 4, 8 (16 = unchanged)
    group_size: int = 128  # input columns per (scale, zero) group; must divide every target's in_features
    storage: Literal["simulated", "packed"] = "simulated"  # packed: codes stay packed, dequantized in forward
    targets: str = "decoder"  # parts (decoder, vision, projector, lm_head) or regexes, joined by '+'

    def validate(self) -> None:
        super().validate()
        self.check_choice("bits", QUANT_BITS)
        self.check_choice("storage", STORAGES)

    def is_noop(self) -> bool:
        return self.bits == 16

    def storage_mode(self) -> str:
        return self.storage

    def uses_groups(self) -> bool:
        """Whether ``group_size`` splits the input columns in this setting."""
        return True

    def check_layers(self, linears: dict[str, nn.Linear]) -> None:
        if self.uses_groups():
            check_group_size(self.name, self.group_size, linears)


@dataclass
class GranularWeightQuantizer(WeightQuantizer):
    """A quantizer applied layer by layer without calibration, one (scale, zero) per
    tensor, output channel or group of ``group_size`` input columns (``granularity``):
    rtn and outlier.  Subclasses say how one weight is quantized."""

    granularity: Literal["tensor", "channel", "group"] = "group"  # what one (scale, zero) covers

    def validate(self) -> None:
        super().validate()
        self.check_choice("granularity", ("tensor", "channel", "group"))
        self.check_range("group_size", 1)

    def uses_groups(self) -> bool:
        return self.granularity == "group"

    def quantize_weight(self, weight: torch.Tensor, block_size: tuple[int, ...]) -> QuantizedWeight:
        raise NotImplementedError

    def process(self, ctx, linears, stats, block, report) -> None:
        for name, lin in linears.items():
            block_size = block_size_for(lin.weight.shape, self.granularity, self.group_size)
            install_quantized(ctx.model, name, lin, self.quantize_weight(lin.weight, block_size), self.storage, report)


def check_group_size(method: str, group_size: int, linears: dict[str, nn.Linear]) -> None:
    for name, lin in linears.items():
        if group_size > lin.in_features or lin.in_features % group_size:
            raise ConfigError(
                f"{method}: group_size={group_size} does not fit layer {name!r} with {lin.in_features} input features "
                f"(it must divide the input features; largest power of two that does: {largest_pow2_divisor(lin.in_features)})"
            )


def largest_pow2_divisor(n: int) -> int:
    return n & -n


def install_quantized(model: nn.Module, name: str, lin: nn.Linear, qw: QuantizedWeight, storage: str, report: MemoryReport, weight_override: torch.Tensor | None = None) -> None:
    """Put ``qw`` in place of ``lin``'s weight and count it.

    ``weight_override``: the simulated weight when it is not ``qw.dequantize()`` alone.
    """
    nnz = qw.outliers.values().numel() if qw.outliers is not None else 0
    analytic = quant_bits_analytic(qw.shape[0], qw.shape[1], qw.bits, qw.block_size, qw.zero_point, nnz)
    report.add_quantized(lin.weight, qw.nbytes(), analytic)
    if storage == "packed":
        packed = packed_module(qw, lin.bias, lin.weight.device)
        packed.to(lin.weight.device)
        set_module(model, name, packed)
    else:
        w = weight_override if weight_override is not None else qw.dequantize(torch.float32)
        lin.weight.data.copy_(w.to(lin.weight.dtype))
