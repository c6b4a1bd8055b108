"""Per-sample figures of the last generated batch: tokens each layer held, visual tokens
kept, and the analytic FLOPs of prefill and of one decode step with those counts."""

from __future__ import annotations

from typing import Any

import torch

from .flops import DecoderShape, decode_flops, prefill_flops
from .state import BatchLayout


def _entries_held(b: BatchLayout, n_layers: int, among: torch.Tensor) -> list[list[float]]:
    """``[row][layer]``: entries each layer's cache holds of the prompt positions ``among``
    (``[B, T]`` bool), a mean over KV heads when heads keep different numbers."""
    out = []
    for r in range(b.batch_size):
        held = []
        for l in range(n_layers):
            rec = b.layers.get(l)
            if rec is None:
                held.append(float(among[r].sum()))
            else:
                pos = rec.positions[r]  # [H, N], -1 on padding
                hit = among[r].gather(0, pos.clamp(min=0).flatten()).view_as(pos) & (pos >= 0)
                held.append(float(hit.sum()) / pos.shape[0])
        out.append(held)
    return out


def prompt_entries_held(b: BatchLayout, n_layers: int) -> list[list[float]]:
    """``[row][layer]``: prompt entries each layer's cache holds for each sample."""
    return _entries_held(b, n_layers, b.prompt_mask)


def visual_entries_held(b: BatchLayout, n_layers: int) -> list[list[float]]:
    """``[row][layer]``: visual prompt entries each layer holds for each sample."""
    return _entries_held(b, n_layers, b.image_mask)


def sample_stats(b: BatchLayout, n_layers: int, shape: DecoderShape) -> list[dict[str, Any]]:
    """Tokens kept (visual and total, mean over layers) and analytic FLOPs per sample."""
    held = prompt_entries_held(b, n_layers)
    visual = visual_entries_held(b, n_layers)
    out = []
    for r in range(b.batch_size):
        real = int(b.prompt_mask[r].sum())
        prefill_tokens = [float(b.seq_len_at[l][r]) if l in b.seq_len_at else float(real) for l in range(n_layers)]
        out.append(
            {
                "prompt_tokens_real": real,
                "visual_tokens": int(b.image_mask[r].sum()),
                "tokens_kept": sum(held[r]) / n_layers,
                "visual_tokens_kept": sum(visual[r]) / n_layers,
                "llm_tokens_last_layer": held[r][-1],
                "prefill_flops": prefill_flops(shape, prefill_tokens),
                "prefill_flops_full": prefill_flops(shape, [float(real)] * n_layers),
                "decode_flops_per_token": decode_flops(shape, held[r]),
                "decode_flops_per_token_full": decode_flops(shape, [float(real)] * n_layers),
            }
        )
    return out
