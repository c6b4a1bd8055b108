"""AWQ: activation-aware weight quantization (per-input-channel scales + group RTN)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
from torch import nn

from ...quant import fake_quantize
from ..base import METHODS
from .calibration import BlockRun, StatKinds
from .common import WeightQuantizer, install_quantized
from .packed import PARAM_DTYPE
from .rtn import rtn_quantize_weight

NO_CLIP = ("q_proj", "k_proj", "qkv")  # their outputs go through a softmax: llm-awq skips clipping them
SEARCHES = ("reference", "sequential")


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


def awq_clip(W: torch.Tensor, X: torch.Tensor, bits: int, group_size: int, n_grid: int = 20, max_shrink: float = 0.5, chunk_elems: int = 1 << 25) -> torch.Tensor:
    """Per (row, group) clip threshold minimising the group's output error (llm-awq
    ``auto_clip``): ``max = max|w| · (1 - i/n_grid)`` for ``i < max_shrink · n_grid``,
    weights clamped to ``[-max, max]`` before group RTN.  Returns ``[out, in/G]``.

    The group's partial outputs ``X_g W_gᵀ`` are one batched matmul over the groups
    (``[groups, tokens, rows]``), taken over output rows in chunks of about
    ``chunk_elems`` elements; rows and groups are independent, so chunking changes nothing.
    """
    out_f, in_f = W.shape
    ng = in_f // group_size
    n_tok = X.reshape(-1, in_f).shape[0]
    xg = X.float().reshape(n_tok, ng, group_size).transpose(0, 1)  # [groups, tokens, G]
    rows = max(1, min(out_f, chunk_elems // max(1, ng * n_tok)))
    best = []
    for r0 in range(0, out_f, rows):
        w = W[r0 : r0 + rows].float().reshape(-1, ng, group_size)  # [rows, groups, G]
        org_out = torch.bmm(xg, w.permute(1, 2, 0))  # [groups, tokens, rows]
        org_max = w.abs().amax(dim=-1, keepdim=True)  # [rows, groups, 1]
        best_max = org_max.clone()
        min_err = torch.full_like(org_max, float("inf"))
        for i in range(int(max_shrink * n_grid)):
            max_val = org_max * (1 - i / n_grid)
            cur = torch.clamp(w, -max_val, max_val)
            q = fake_quantize(cur.reshape(-1, in_f), bits, (1, group_size), zero_point="int", param_dtype=PARAM_DTYPE).reshape(w.shape)
            err = (torch.bmm(xg, q.permute(1, 2, 0)) - org_out).pow(2).mean(dim=1)  # [groups, rows]
            err = err.T.unsqueeze(-1)
            better = err < min_err
            min_err = torch.where(better, err, min_err)
            best_max = torch.where(better, max_val, best_max)
        best.append(best_max.reshape(-1, ng))
    return torch.cat(best)


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


class _Stop(Exception):
    pass


@torch.no_grad()
def capture_module_inputs(layer: nn.Module, inputs: list[tuple[tuple, dict]], module: nn.Module) -> list[tuple[tuple, dict]]:
    """The positional and keyword arguments ``module`` is called with (its first call)
    when ``layer`` runs on each of ``inputs``; the forward stops there."""
    got: list[tuple[tuple, dict]] = []

    def pre_hook(mod, args, kwargs):
        got.append((tuple(args), dict(kwargs)))
        raise _Stop

    handle = module.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        for args, kwargs in inputs:
            try:
                layer(*args, **kwargs)
            except _Stop:
                pass
    finally:
        handle.remove()
    return got


def _real_rows(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``x``'s rows at the real tokens (``mask`` [B, T] when it fits), as ``[n, features]``."""
    if mask is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(mask.shape):
        x = x[mask.to(x.device)]
    return x.reshape(-1, x.shape[-1])


def _masked_sse(diff: torch.Tensor, mask: torch.Tensor | None) -> tuple[float, int]:
    """Sum and count of ``diff`` over the real tokens."""
    diff = _real_rows(diff, mask)
    return float(diff.sum()), diff.numel()


class SubmoduleLoss:
    """``loss(s)``: mean squared change of ``module``'s output, over the real tokens of
    its recorded float inputs, when the group's Linears hold ``Q(W·s)/s`` (llm-awq
    ``_search_module_scale``, AutoAWQ ``_compute_best_scale``).

    Three ways to evaluate it, same loss: the group's single Linear (``linear``): its
    output change ``X (Q(W·s)/s - W)ᵀ`` on the stacked input rows, one matmul per α with no
    module rewrite; a module that takes one hidden-state tensor and is checked to act token
    by token on it (the MLP, ``stacked``): one call on all real tokens stacked; any other
    module (the attention, ``per_batch``): one call per calibration batch.
    """

    def __init__(self, module: nn.Module, inputs: list[tuple[tuple, dict]], masks: list[torch.Tensor | None], lins: list[nn.Linear], bits: int, group_size: int) -> None:
        self.module, self.inputs = module, inputs
        self.masks = [masks[i] if i < len(masks) else None for i in range(len(inputs))]
        self.lins, self.bits, self.group_size = lins, bits, group_size
        self.originals = [lin.weight.data.clone() for lin in lins]
        self.rows: torch.Tensor | None = None
        self.stacked: torch.Tensor | None = None
        self.reference: list[torch.Tensor] = []
        if isinstance(module, nn.Linear) and lins == [module]:
            self.mode = "linear"
            rows = [_real_rows(args[0] if args else kwargs["input"], m).float() for (args, kwargs), m in zip(inputs, self.masks)]
            self.rows = torch.cat(rows) if rows else torch.zeros(0, module.in_features)
            self.n_rows = self.rows.shape[0]
            self.gram: torch.Tensor | None = None
            if self.n_rows > module.in_features:
                # sum((X Eᵀ)²) = sum((E G) ∘ E) with G = XᵀX: one [out, in] x [in, in] matmul per α
                # instead of [n, in] x [in, out], fewer FLOPs whenever there are more rows than inputs
                self.gram, self.rows = self.rows.T @ self.rows, None
            return
        self.mode = "per_batch"
        self.reference = [self._out(args, kwargs) for args, kwargs in inputs]
        if inputs and all(len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor) and args[0].dim() == 3 for args, kwargs in inputs):
            stacked = torch.cat([_real_rows(args[0], m) for (args, _), m in zip(inputs, self.masks)]).unsqueeze(0)
            ref = self._out((stacked,), {})
            per_batch = torch.cat([_real_rows(r, m) for r, m in zip(self.reference, self.masks)]).float()
            if ref.shape[:2] == stacked.shape[:2] and ref.shape[1:] == (per_batch.shape[0], per_batch.shape[-1]):
                tol = 1e-3 * float(per_batch.abs().max()) + 1e-12
                if torch.allclose(ref[0].float(), per_batch, rtol=1e-3, atol=tol):  # token by token: stack the batches
                    self.mode, self.stacked, self.reference = "stacked", stacked, [ref]

    def _out(self, args: tuple, kwargs: dict) -> torch.Tensor:
        out = self.module(*args, **kwargs)
        return out[0] if isinstance(out, (tuple, list)) else out

    @torch.no_grad()
    def __call__(self, s: torch.Tensor) -> float:
        if self.mode == "linear":
            w = self.originals[0]
            err = scaled_fake_quant(w, s.to(w.device), self.bits, self.group_size).to(w.dtype).float() - w.float()
            if self.gram is not None:
                return float(((err @ self.gram.to(w.device)) * err).sum()) / (self.n_rows * err.shape[0])
            out = self.rows.to(w.device) @ err.T
            return float((out**2).mean()) if out.numel() else 0.0
        for lin, w in zip(self.lins, self.originals):
            lin.weight.data.copy_(scaled_fake_quant(w, s.to(w.device), self.bits, self.group_size).to(w.dtype))
        try:
            if self.mode == "stacked":
                return float(((self._out((self.stacked,), {}).float() - self.reference[0].float()) ** 2).mean())
            total, count = 0.0, 0
            for (args, kwargs), ref, mask in zip(self.inputs, self.reference, self.masks):
                t, c = _masked_sse((self._out(args, kwargs).float() - ref.float()) ** 2, mask)
                total += t
                count += c
            return total / max(count, 1)
        finally:
            for lin, w in zip(self.lins, self.originals):
                lin.weight.data.copy_(w)


def inspected_module(modules: dict[str, nn.Module], block_name: str, prev_name: str, names: list[str]) -> str:
    """The module whose output the reference search compares for one group: a single
    Linear fed by a Linear (o by v, down by up) is its own; a group fed by a norm is the
    sub-module holding it (``self_attn`` for q/k/v, ``mlp`` for gate/up); the whole block
    when the group's Linears have no common sub-module."""
    if len(names) == 1 and isinstance(modules[prev_name], nn.Linear):
        return names[0]
    parents = {n.rsplit(".", 1)[0] for n in names}
    if len(parents) == 1:
        (parent,) = parents
        if parent.startswith(block_name + ".") and parent in modules:
            return parent
    return block_name


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

    For each group of Linears fed by the same op (q/k/v by the input norm, o by v —
    skipped when their widths differ, as under grouped-query attention —, gate/up by the
    post-attention norm, down by up): per input channel ``s = mean|x|^α``, α on a
    ``n_grid``-point grid in [0, 1), chosen by an output MSE on the calibration inputs
    with the group quantized as ``Q(W·s)/s``; then ``1/s`` is folded into the feeding op
    and ``s`` into the Linears (the float model is unchanged), optionally the clip
    threshold is searched (not for q/k), and the weights get group RTN with integer
    zeros.  Targets outside the decoder use the group's own output MSE.  ``bits=16``
    leaves weights untouched.

    ``search`` says which output and which inputs:

    - ``reference`` (default; llm-awq ``auto_scale`` / AutoAWQ ``AwqQuantizer``): every
      block is calibrated on the *float* model's activations — block ``i+1`` gets block
      ``i``'s outputs from before its scaling, clipping and quantization — and each group
      is scored on its own sub-module: q/k/v by the self-attention module's output, o by
      o_proj's output, gate/up by the MLP's output, down by down_proj's output (on all
      real calibration tokens; the Linear-only losses are one matmul per α).
    - ``sequential`` (this project's earlier variant): each block is calibrated on the
      outputs of the already-quantized blocks before it, and every group is scored by the
      whole decoder block's output MSE.
    """

    name = "awq"
    needs_calibration = True

    n_grid: int = 20  # α grid size
    clip: bool = True  # search a per-group clip threshold after scaling (llm-awq auto_clip)
    search: Literal["reference", "sequential"] = "reference"  # reference: float inputs, per-sub-module loss (llm-awq, AutoAWQ); sequential: quantized-chain inputs, whole-block loss

    @property
    def stat_kinds(self) -> StatKinds:  # type: ignore[override]
        return StatKinds(abs_mean=True, keep_tokens=512, float_inputs=self.search == "reference")

    def validate(self) -> None:
        super().validate()
        self.check_range("group_size", 1)
        self.check_range("n_grid", 1)
        self.check_choice("search", SEARCHES)

    def _loss_fn(self, modules: dict[str, nn.Module], prev_name: str, names: list[str], lins: list[nn.Linear], stats, block: BlockRun | None, cache: dict[str, Any]) -> Callable[[torch.Tensor], float]:
        if block is None:  # vision tower / projector / lm_head: the group's own output on the kept rows
            X = stats[names[0]].rows
            originals = [lin.weight.data.clone() for lin in lins]
            return lambda s: linear_output_mse(X, originals, s.to(X.device), self.bits, self.group_size)
        if self.search == "sequential":
            if "reference" not in cache:
                cache["reference"] = block.outputs()
            reference = cache["reference"]
            originals = [lin.weight.data.clone() for lin in lins]

            def block_loss(s):
                for lin, w in zip(lins, originals):
                    lin.weight.data.copy_(scaled_fake_quant(w, s.to(w.device), self.bits, self.group_size).to(w.dtype))
                try:
                    return block.mse(reference)
                finally:
                    for lin, w in zip(lins, originals):
                        lin.weight.data.copy_(w)

            return block_loss
        if "block_name" not in cache:
            cache["block_name"] = next(n for n, m in modules.items() if m is block.layer)
        target = inspected_module(modules, cache["block_name"], prev_name, names)
        module = modules[target]
        inputs = block.inputs if module is block.layer else capture_module_inputs(block.layer, block.inputs, module)
        return SubmoduleLoss(module, inputs, block.masks, lins, self.bits, self.group_size)

    @torch.no_grad()
    def process(self, ctx, linears, stats, block: BlockRun | None, report) -> None:
        model = ctx.model
        modules = dict(model.named_modules())
        groups, loose = _find_groups(model, list(linears), ctx.adapter.scale_predecessors)
        cache: dict[str, Any] = {}
        alphas: dict[str, float] = {}
        chosen: list[tuple[str, list[str], torch.Tensor]] = []
        for prev_name, names in groups:
            lins = [linears[n] for n in names]
            loss_fn = self._loss_fn(modules, prev_name, names, lins, stats, block, cache)
            s, alpha, _ = awq_search(stats[names[0]].abs_mean, loss_fn, self.n_grid)
            del loss_fn
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
