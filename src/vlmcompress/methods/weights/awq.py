"""AWQ: activation-aware weight quantization (per-input-channel scales + group RTN)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ...quant import fake_quantize
from ..base import METHODS
from .calibration import BlockRun, StatKinds
from .common import WeightQuantizer, install_quantized
from .packed import PARAM_DTYPE
from .rtn import rtn_quantize_weight

NO_CLIP = ("q_proj", "k_proj", "qkv")  # their outputs go through a softmax: llm-awq skips clipping them


def scales_for_alpha(x_abs_mean: torch.Tensor, alpha: float) -> torch.Tensor:
    """``s = mean|x|^α``, normalised so that ``max(s) · min(s) = 1`` (llm-awq ``auto_scale``)."""
    s = x_abs_mean.float().pow(alpha).clamp(min=1e-4)
    return s / (s.max() * s.min()).sqrt()


def awq_search(x_abs_mean: torch.Tensor, loss_fn: Callable[[torch.Tensor], float], n_grid: int = 20) -> tuple[torch.Tensor, float, list[float]]:
    """Grid search α ∈ {0, 1/n, ..., (n-1)/n}: returns ``(best scales, best α, losses)``.

    ``loss_fn(scales)`` returns the output MSE when the group's weights are replaced by
    ``Q(W·s)/s`` (quantized in the scaled space, read back unscaled).
    """
    losses = []
    best = (float("inf"), 0.0, None)
    for k in range(n_grid):
        alpha = k / n_grid
        s = scales_for_alpha(x_abs_mean, alpha)
        loss = loss_fn(s)
        losses.append(loss)
        if loss < best[0]:
            best = (loss, alpha, s)
    return best[2], best[1], losses


def scaled_fake_quant(W: torch.Tensor, s: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """``Q(W · diag(s)) · diag(s)⁻¹`` with group RTN, integer zero, fp16 scales."""
    Ws = W.float() * s.reshape(1, -1)
    q = fake_quantize(Ws, bits, (1, group_size), zero_point="int", param_dtype=PARAM_DTYPE)
    return q / s.reshape(1, -1)


def linear_output_mse(X: torch.Tensor, Ws: list[torch.Tensor], s: torch.Tensor, bits: int, group_size: int) -> float:
    """Output MSE of the Linears ``Ws`` (sharing input rows ``X``) under ``scaled_fake_quant``."""
    total, count = 0.0, 0
    for W in Ws:
        ref = X @ W.float().T
        out = X @ scaled_fake_quant(W, s, bits, group_size).T
        total += float(((out - ref) ** 2).sum())
        count += ref.numel()
    return total / max(count, 1)


def awq_clip(W: torch.Tensor, X: torch.Tensor, bits: int, group_size: int, n_grid: int = 20, max_shrink: float = 0.5) -> torch.Tensor:
    """Per (row, group) clip threshold minimising the group's output error (llm-awq
    ``auto_clip``): ``max = max|w| · (1 - i/n_grid)`` for ``i < max_shrink · n_grid``,
    weights clamped to ``[-max, max]`` before group RTN.  Returns ``[out, in/G]``."""
    out_f, in_f = W.shape
    ng = in_f // group_size
    w = W.float().reshape(out_f, 1, ng, group_size)
    x = X.float().reshape(1, -1, ng, group_size)
    org_out = (x * w).sum(-1)  # [out, tokens, groups]
    org_max = w.abs().amax(dim=-1, keepdim=True)  # [out, 1, groups, 1]
    best_max = org_max.clone()
    min_err = torch.full_like(org_max, float("inf"))
    for i in range(int(max_shrink * n_grid)):
        max_val = org_max * (1 - i / n_grid)
        cur = torch.clamp(w, -max_val, max_val)
        q = fake_quantize(cur.reshape(out_f, in_f), bits, (1, group_size), zero_point="int", param_dtype=PARAM_DTYPE).reshape(w.shape)
        err = ((x * q).sum(-1) - org_out).pow(2).mean(dim=1).reshape(min_err.shape)
        better = err < min_err
        min_err = torch.where(better, err, min_err)
        best_max = torch.where(better, max_val, best_max)
    return best_max.reshape(out_f, ng)


def apply_clip(W: torch.Tensor, max_val: torch.Tensor, group_size: int) -> torch.Tensor:
    out_f, in_f = W.shape
    m = max_val.reshape(out_f, -1, 1).to(W.dtype)
    return torch.clamp(W.reshape(out_f, -1, group_size), -m, m).reshape(out_f, in_f)


@torch.no_grad()
def fold_scales(prev: nn.Module, linears: list[nn.Linear], s: torch.Tensor) -> None:
    """``prev`` output ÷ s, each Linear's input columns × s: the float function is unchanged."""
    s = s.to(prev.weight.device)
    if isinstance(prev, nn.Linear):
        prev.weight.div_(s.reshape(-1, 1).to(prev.weight.dtype))
    else:  # RMSNorm / LayerNorm: y = γ ⊙ norm(x) (+ β)
        prev.weight.div_(s.to(prev.weight.dtype))
    if getattr(prev, "bias", None) is not None:
        prev.bias.div_(s.to(prev.bias.dtype))
    for lin in linears:
        lin.weight.mul_(s.reshape(1, -1).to(lin.weight.dtype))


def _find_groups(model: nn.Module, names: list[str], predecessors: dict[str, tuple[str, ...]]) -> tuple[list[tuple[str, list[str]]], list[str]]:
    """Group target Linears by the op that feeds them: ``[(prev name, [linear names])]``
    plus the Linears without a foldable predecessor.  ``predecessors``: the model
    family's table (:attr:`~vlmcompress.models.base.ModelAdapter.scale_predecessors`)."""
    modules = dict(model.named_modules())
    groups: dict[str, list[str]] = {}
    loose: list[str] = []
    for name in names:
        prev_name = None
        for suffix, candidates in predecessors.items():
            if name.endswith("." + suffix):
                base = name[: -len(suffix)]
                for c in candidates:
                    if base + c in modules and hasattr(modules[base + c], "weight"):
                        prev_name = base + c
                        break
                break
        if prev_name is not None:
            prev = modules[prev_name]
            width = prev.weight.shape[0]
            if width != modules[name].in_features:
                prev_name = None  # e.g. GQA: v_proj narrower than o_proj's input
        if prev_name is None:
            loose.append(name)
        else:
            groups.setdefault(prev_name, []).append(name)
    return list(groups.items()), loose


@METHODS.register
@dataclass
class AWQ(WeightQuantizer):
    """AWQ (Lin et al., "AWQ: Activation-aware Weight Quantization for LLM Compression
    and Acceleration", MLSys 2024).

    For each group of Linears fed by the same op (q/k/v by the input norm, o by v,
    gate/up by the post-attention norm, down by up): per input channel
    ``s = mean|x|^α``, α on a ``n_grid``-point grid in [0, 1), chosen by the MSE of the
    whole decoder block's output on the calibration inputs with the group quantized as
    ``Q(W·s)/s``; then ``1/s`` is folded into the feeding op and ``s`` into the
    Linears (the float model is unchanged), optionally the clip threshold is searched
    (not for q/k), and the weights get group RTN with integer zeros.  Targets outside
    the decoder use the group's own output MSE.  ``bits=16`` leaves weights untouched.
    """

    name = "awq"
    needs_calibration = True
    stat_kinds = StatKinds(abs_mean=True, keep_tokens=512)

    n_grid: int = 20  # α grid size
    clip: bool = True  # search a per-group clip threshold after scaling (llm-awq auto_clip)

    def validate(self) -> None:
        super().validate()
        self.check_range("group_size", 1)
        self.check_range("n_grid", 1)

    @torch.no_grad()
    def process(self, ctx, linears, stats, block: BlockRun | None, report) -> None:
        model = ctx.model
        modules = dict(model.named_modules())
        groups, loose = _find_groups(model, list(linears), ctx.adapter.scale_predecessors)
        reference = block.outputs() if block is not None else None
        alphas: dict[str, float] = {}
        chosen: list[tuple[str, list[str], torch.Tensor]] = []
        for prev_name, names in groups:
            lins = [linears[n] for n in names]
            x_mean = stats[names[0]].abs_mean
            originals = [lin.weight.data.clone() for lin in lins]
            if block is not None:

                def loss_fn(s, lins=lins, originals=originals):
                    for lin, w in zip(lins, originals):
                        lin.weight.data.copy_(scaled_fake_quant(w, s.to(w.device), self.bits, self.group_size).to(w.dtype))
                    try:
                        return block.mse(reference)
                    finally:
                        for lin, w in zip(lins, originals):
                            lin.weight.data.copy_(w)
            else:
                X = stats[names[0]].rows

                def loss_fn(s, X=X, originals=originals):
                    return linear_output_mse(X, originals, s.to(X.device), self.bits, self.group_size)

            s, alpha, _ = awq_search(x_mean, loss_fn, self.n_grid)
            alphas[prev_name] = alpha
            chosen.append((prev_name, names, s))
        for prev_name, names, s in chosen:  # fold after every search, as llm-awq
            fold_scales(modules[prev_name], [linears[n] for n in names], s)
        scale_of = {n: s for _, names, s in chosen for n in names}
        for name, lin in linears.items():
            W = lin.weight.data.float()
            if self.clip and not name.endswith(NO_CLIP):
                X = stats[name].rows.to(W.device)
                if name in scale_of:
                    X = X / scale_of[name].to(X.device).reshape(1, -1)  # inputs now arrive divided by s
                if X.numel():
                    W = apply_clip(W, awq_clip(W, X, self.bits, self.group_size), self.group_size)
            qw = rtn_quantize_weight(W, self.bits, (1, self.group_size), zero_point="int")
            install_quantized(model, name, lin, qw, self.storage, report)
        report.notes.setdefault("awq_alphas", []).extend(alphas.values())
        report.notes["awq_unscaled_layers"] = report.notes.get("awq_unscaled_layers", 0) + len(loose)
