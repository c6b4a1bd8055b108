"""The block-by-block calibration pass shared by GPTQ, AWQ, Wanda, SparseGPT and ECoFLaP.

The model is never run end to end with all its activations kept.  Instead:

1. **capture**: the calibration batches go through the model until decoder block 0,
   where a forward pre-hook stores the block's positional and keyword arguments
   (hidden states, attention mask, rotary ``position_embeddings`` — M-RoPE for
   Qwen2-VL — ...) and raises to stop the forward.  Targets outside the decoder that run
   before it (vision tower, projector) are hooked during this pass; once they are
   compressed the capture is repeated so block 0 sees the compressed vision path.
2. **per block** ``i``: the block's target Linears get forward hooks that accumulate
   input statistics (Hessian ``XᵀX``, column norms, mean ``|x|``) over the real tokens
   (padding is dropped with the attention mask); the block is run on the stored inputs;
   the method compresses the block's Linears; the block is run again and its outputs
   become block ``i+1``'s inputs.  So block ``i`` is calibrated on the outputs of the
   already-compressed blocks ``0..i-1`` (as the GPTQ, SparseGPT and Wanda references do),
   and the memory held beyond the model is one block's inputs and statistics.
3. Targets that run after the decoder (``lm_head``) are calibrated with one last full
   forward pass through the compressed model.

With ``StatKinds.float_inputs`` (AWQ, as llm-awq and AutoAWQ do) every part is calibrated
on the float model's activations instead: block ``i+1``'s inputs are block ``i``'s outputs
from before it is compressed, block 0's inputs are captured once before the vision targets
are compressed (no second capture), and the targets after the decoder are calibrated with
a full forward pass before anything is compressed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ...errors import ConfigError
from ...models.base import ModelAdapter


class _StopForward(Exception):
    pass


@dataclass(frozen=True)
class StatKinds:
    """Which input statistics a method needs."""

    hessian: bool = False  # XᵀX (GPTQ, SparseGPT)
    sq_norm: bool = False  # Σ x_j² per input column (Wanda)
    abs_mean: bool = False  # mean |x_j| per input column (AWQ)
    keep_tokens: int = 0  # keep up to this many input rows (AWQ clip search)
    float_inputs: bool = False  # feed every block the float model's activations, not the compressed chain's (AWQ references)


class InputStats:
    """Statistics of one Linear's inputs, accumulated batch by batch in float32."""

    def __init__(self, in_features: int, device: torch.device, kinds: StatKinds) -> None:
        self.kinds = kinds
        self.n = 0
        self._xtx = torch.zeros(in_features, in_features, device=device) if kinds.hessian else None
        self._sq = torch.zeros(in_features, device=device) if kinds.sq_norm else None
        self._abs = torch.zeros(in_features, device=device) if kinds.abs_mean else None
        self._rows: list[torch.Tensor] = []
        self._kept = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        self.n += x.shape[0]
        if self._xtx is not None:
            self._xtx += x.T @ x
        if self._sq is not None:
            self._sq += (x * x).sum(0)
        if self._abs is not None:
            self._abs += x.abs().sum(0)
        if self.kinds.keep_tokens:
            # up to keep_tokens rows per batch, evenly spaced; thinned to keep_tokens in `rows`
            step = max(1, x.shape[0] // self.kinds.keep_tokens)
            self._rows.append(x[::step][: self.kinds.keep_tokens].clone())

    @property
    def hessian(self) -> torch.Tensor:
        """``H = 2/n Σ x xᵀ`` (the GPTQ / SparseGPT layer-wise Hessian)."""
        return self._xtx * (2.0 / max(self.n, 1))

    @property
    def col_norm(self) -> torch.Tensor:
        """``||X_j||_2`` over every calibration token (Wanda)."""
        return self._sq.sqrt()

    @property
    def abs_mean(self) -> torch.Tensor:
        """``mean |x_j|`` per input channel (AWQ's activation scale)."""
        return self._abs / max(self.n, 1)

    @property
    def rows(self) -> torch.Tensor:
        """Up to ``keep_tokens`` input rows, evenly spaced over the calibration tokens."""
        if not self._rows:
            return torch.zeros(0)
        rows = torch.cat(self._rows)
        if rows.shape[0] > self.kinds.keep_tokens:
            idx = torch.linspace(0, rows.shape[0] - 1, self.kinds.keep_tokens, device=rows.device).round().long()
            rows = rows[idx]
        return rows


@dataclass
class BlockRun:
    """One decoder block and its stored inputs: what AWQ needs to measure block-output MSE."""

    layer: nn.Module
    inputs: list[tuple[tuple, dict]]
    masks: list[torch.Tensor | None] = field(default_factory=list)  # [B, T] real tokens of each batch

    @torch.no_grad()
    def mse(self, reference: list[torch.Tensor]) -> float:
        """Mean squared difference of the block's outputs from ``reference``, over real tokens."""
        total, count = 0.0, 0
        for i, ((args, kwargs), ref) in enumerate(zip(self.inputs, reference)):
            out = _hidden(self.layer(*args, **kwargs)).float()
            diff = (out - ref.float()) ** 2
            m = self.masks[i] if i < len(self.masks) else None
            if m is not None and diff.dim() == 3 and tuple(diff.shape[:2]) == tuple(m.shape):
                diff = diff[m.to(diff.device)]
            total += float(diff.sum())
            count += diff.numel()
        return total / max(count, 1)

    @torch.no_grad()
    def outputs(self) -> list[torch.Tensor]:
        return [_hidden(self.layer(*args, **kwargs)) for args, kwargs in self.inputs]


def _hidden(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def _with_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (hidden,) + tuple(args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


@dataclass
class _Collector:
    kinds: StatKinds
    stats: dict[str, InputStats] = field(default_factory=dict)
    token_mask: torch.Tensor | None = None  # [B, T] bool of the batch in flight
    handles: list = field(default_factory=list)

    def hook(self, modules: dict[str, nn.Linear]) -> None:
        for name, mod in modules.items():
            self.stats[name] = InputStats(mod.in_features, mod.weight.device, self.kinds)
            self.handles.append(mod.register_forward_hook(self._make(name)))

    def _make(self, name: str):
        def fn(module, args, output):
            x = args[0]
            m = self.token_mask
            if m is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(m.shape):
                x = x[m.to(x.device)]
            self.stats[name].add(x.detach())

        return fn

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


GroupFn = Callable[[dict[str, nn.Linear], dict[str, InputStats], BlockRun | None], None]


class SequentialPass:
    """Drives the block-by-block pass; a method supplies ``process(linears, stats, block)``."""

    def __init__(self, model: nn.Module, adapter: ModelAdapter, batches: list[dict]) -> None:
        self.model = model
        self.adapter = adapter
        self.batches = batches

    def _masks(self) -> list[torch.Tensor | None]:
        return [b.get("attention_mask").bool() if b.get("attention_mask") is not None else None for b in self.batches]

    @torch.no_grad()
    def capture(self, collector: _Collector | None = None) -> list[tuple[tuple, dict]]:
        layer0 = self.adapter.decoder_layers[0]
        captured: list[tuple[tuple, dict]] = []

        def pre_hook(module, args, kwargs):
            captured.append((tuple(args), dict(kwargs)))
            raise _StopForward

        handle = layer0.register_forward_pre_hook(pre_hook, with_kwargs=True)
        try:
            for batch, mask in zip(self.batches, self._masks()):
                if collector is not None:
                    collector.token_mask = mask
                try:
                    self.model(**batch, use_cache=False)
                except _StopForward:
                    pass
        finally:
            handle.remove()
        return captured

    @torch.no_grad()
    def full_forward(self, collector: _Collector) -> None:
        for batch, mask in zip(self.batches, self._masks()):
            collector.token_mask = mask
            self.model(**batch, use_cache=False)

    @torch.no_grad()
    def run(self, targets: dict[str, nn.Linear], block_of: dict[str, int], kinds: StatKinds, process: GroupFn) -> None:
        outside = {n: m for n, m in targets.items() if n not in block_of}
        collector = _Collector(kinds)
        collector.hook(outside)
        try:
            inputs = self.capture(collector)
        finally:
            collector.remove()
        before = {n: m for n, m in outside.items() if collector.stats[n].n > 0}
        after = {n: m for n, m in outside.items() if n not in before}
        if after and kinds.float_inputs:  # on the float model, before anything is compressed
            self._process_after(after, kinds, process)
            after = {}
        if before:
            process(before, {n: collector.stats[n] for n in before}, None)
            if not kinds.float_inputs:
                inputs = self.capture()

        masks = self._masks()
        for i, layer in enumerate(self.adapter.decoder_layers):
            mine = {n: m for n, m in targets.items() if block_of.get(n) == i}
            block = BlockRun(layer, inputs, masks)
            outs = None
            if mine:
                collector = _Collector(kinds)
                collector.hook(mine)
                float_outs = []
                try:
                    for (args, kwargs), mask in zip(inputs, masks):
                        collector.token_mask = mask
                        out = _hidden(layer(*args, **kwargs))
                        if kinds.float_inputs:
                            float_outs.append(out)
                finally:
                    collector.remove()
                if kinds.float_inputs:
                    outs = float_outs  # block i+1 sees block i's outputs from before its compression
                process(mine, collector.stats, block)
            if outs is None:
                outs = block.outputs()
            inputs = [_with_hidden(a, k, h) for (a, k), h in zip(inputs, outs)]
        del inputs

        if after:
            self._process_after(after, kinds, process)

    def _process_after(self, after: dict[str, nn.Linear], kinds: StatKinds, process: GroupFn) -> None:
        collector = _Collector(kinds)
        collector.hook(after)
        try:
            self.full_forward(collector)
        finally:
            collector.remove()
        process(after, collector.stats, None)


def calibration_batches(ctx) -> tuple[list[dict], dict[str, Any]]:
    """The context's calibration batches and what to record about them."""
    if ctx.calibration is None:
        raise ConfigError("this weight method needs calibration data, but the run supplies none")
    source = ctx.calibration
    batches = source.batches()
    n = sum(int(b["input_ids"].shape[0]) for b in batches)
    info: dict[str, Any] = {"calibration_samples": n, **source.describe()}
    return batches, info


def lm_loss(model: nn.Module, adapter: ModelAdapter, batches: list[dict]) -> float:
    """Mean next-token loss over the calibration batches' text tokens (image tokens and
    padding are not predicted): the loss ECoFLaP's zeroth-order scores difference."""
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            ids = batch["input_ids"]
            labels = ids.clone()
            labels[adapter.image_token_mask(ids)] = -100
            if batch.get("attention_mask") is not None:
                labels[batch["attention_mask"] == 0] = -100
            logits = model(**batch, use_cache=False).logits.float()
            shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1])
            shift_labels = labels[:, 1:].reshape(-1).to(logits.device)
            loss = nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=-100, reduction="sum")
            total += float(loss)
            count += int((shift_labels != -100).sum())
    return total / max(count, 1)
