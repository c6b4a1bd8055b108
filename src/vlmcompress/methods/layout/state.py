"""Token bookkeeping of the batch being generated, and the per-row helpers that turn
per-sample selections into the batch's slot layout.

Batched layout.  Row ``b`` keeps ``n_b`` entries in layer ``l``; the layer stores
``N_l = max_b n_b`` slots per row, the row's entries right-aligned (sorted by original
position) and its ``N_l - n_b`` leading slots filled with copies of its first kept
entry (finite values, harmless to min/max based quantizers) and masked out.  This
mirrors left padding, which is what the prompt already looks like.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ...errors import ConfigError


@dataclass
class LayerRecord:
    """What one layer's cache holds for the prompt after prefill."""

    valid: torch.Tensor  # [B, N] bool: real slot (False: padding)
    positions: torch.Tensor  # [B, H, N] original prompt positions (-1: padding)


@dataclass
class BatchLayout:
    """Token bookkeeping of the batch being generated."""

    input_ids: torch.Tensor  # [B, T]
    prompt_mask: torch.Tensor  # [B, T] bool
    image_mask: torch.Tensor  # [B, T] bool
    seq_index: torch.Tensor  # [B, S] slot -> original position (pads point at a real one)
    seq_valid: torch.Tensor  # [B, S] bool
    prefill: bool = True
    layers: dict[int, LayerRecord] = field(default_factory=dict)
    appended: dict[int, int] = field(default_factory=dict)
    dropped: bool = False  # the hidden sequence is shorter than the prompt
    drops: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> keep mask [B, S] asked for
    seq_len_at: dict[int, list[int]] = field(default_factory=dict)  # layer -> tokens each row fed to it at prefill
    scratch: dict[str, Any] = field(default_factory=dict)  # per-participant data of this batch

    @classmethod
    def start(cls, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, image_mask: torch.Tensor) -> "BatchLayout":
        """The layout of a new left-padded prompt batch (refuses any other padding)."""
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        B, T = input_ids.shape
        if not bool((mask.long().diff(dim=-1) >= 0).all()):
            raise ConfigError("token eviction/pruning expects left padding (padding on the left of each row)")
        seq_index = torch.arange(T, device=input_ids.device).expand(B, T).clone()
        # pad slots point at the row's first real token, so gathers never read junk
        first = (~mask).sum(-1, keepdim=True).clamp(max=T - 1)
        seq_index = torch.where(mask, seq_index, first.expand(B, T))
        return cls(input_ids=input_ids, prompt_mask=mask, image_mask=image_mask & mask, seq_index=seq_index, seq_valid=mask.clone())

    @property
    def batch_size(self) -> int:
        return self.prompt_mask.shape[0]

    @property
    def seq_image(self) -> torch.Tensor:
        return self.image_mask.gather(1, self.seq_index) & self.seq_valid

    def real_lengths(self) -> list[int]:
        return self.seq_valid.sum(-1).tolist()

    def record_kept(self, layer: int, index: torch.Tensor, valid: torch.Tensor) -> None:
        """``layer`` stores the current sequence's slots ``index`` ``[B, H, N]`` (``valid`` ``[B, N]``)."""
        pos = torch.where(self.seq_valid, self.seq_index, -1)
        positions = pos[:, None, :].expand(-1, index.shape[1], -1).gather(2, index)
        self.layers[layer] = LayerRecord(valid, torch.where(valid[:, None, :], positions, -1))

    def record_all(self, layer: int, kv_heads: int) -> None:
        """``layer`` stores the whole current sequence (until an evictor narrows it)."""
        pos = torch.where(self.seq_valid, self.seq_index, -1)
        self.layers[layer] = LayerRecord(self.seq_valid.clone(), pos[:, None, :].expand(-1, kv_heads, -1).clone())


def right_aligned_index(keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``keep`` ``[B, S]`` bool -> (``index`` ``[B, N]``, ``valid`` ``[B, N]``): each row's kept
    slots in order, right-aligned; leading pad slots repeat the row's first kept slot."""
    counts = keep.sum(-1)
    n = int(counts.max())
    S = keep.shape[1]
    # sort key: kept slots by position, dropped ones after them
    order = torch.where(keep, torch.arange(S, device=keep.device), S + torch.arange(S, device=keep.device))
    sorted_slots = order.sort(-1).values  # kept first, in order
    out = torch.empty(keep.shape[0], n, dtype=torch.long, device=keep.device)
    valid = torch.zeros(keep.shape[0], n, dtype=torch.bool, device=keep.device)
    for b in range(keep.shape[0]):
        c = int(counts[b])
        out[b, n - c :] = sorted_slots[b, :c]
        out[b, : n - c] = sorted_slots[b, 0]
        valid[b, n - c :] = True
    return out, valid


def row_slices(layout: BatchLayout, keys: torch.Tensor, q_tail: torch.Tensor | None):
    """Yield ``(row, L, k_row [H_kv, L, D], q_row [H_q, n, D] | None, start)`` with each
    row's padding removed (real slots are a suffix of the row)."""
    S = keys.shape[2]
    lengths = layout.seq_valid.sum(-1).tolist()
    for r, L in enumerate(lengths):
        start = S - L
        q_row = None
        if q_tail is not None:
            n = min(q_tail.shape[2], L)
            q_row = q_tail[r, :, q_tail.shape[2] - n :]
        yield r, L, keys[r, :, start:], q_row, start


def layout_from_rows(selections: list[torch.Tensor], starts: list[int], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row selections ``[H, n_b]`` (row-real positions) -> gather ``index [B, H, N]``
    into the layer's slots and ``valid [B, N]``, right-aligned with pad slots repeating
    the row's first kept entry."""
    H = selections[0].shape[0]
    N = max(s.shape[1] for s in selections)
    B = len(selections)
    index = torch.empty(B, H, N, dtype=torch.long, device=device)
    valid = torch.zeros(B, N, dtype=torch.bool, device=device)
    for r, (sel, start) in enumerate(zip(selections, starts)):
        n = sel.shape[1]
        slots = sel.to(device) + start
        index[r, :, N - n :] = slots
        index[r, :, : N - n] = slots[:, :1]
        valid[r, N - n :] = True
    return index, valid
