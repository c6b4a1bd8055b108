"""Base of the KV-cache eviction methods: per-row selection at the end of prefill, on the
shared token layout (``methods/layout``)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..layout import BatchLayout, LayoutMethod, layout_from_rows, row_slices
from . import scores as S


@dataclass
class EvictionMethod(LayoutMethod):
    """Base of KV-cache eviction at the end of prefill.  Subclasses implement
    :meth:`select` for one row; the base handles batching, budgets and the layout."""

    hook: ClassVar[str] = "attention"
    family: ClassVar[str | None] = "kv_eviction"
    needs_queries: ClassVar[str] = "none"  # "none" | "window" | "all"

    ratio: float = 0.4  # share of each sample's real prompt kept, in (0, 1]

    def validate(self) -> None:
        self.check_range("ratio", 0, 1, low_open=True)

    # -------------------------------------------------------------- per-method pieces
    def budget(self, layer: int, length: int) -> int:
        return S.kv_budget(length, self.ratio)

    def window(self, layer: int, length: int) -> int:
        """Recent tokens always kept (the design's default: 10% of the budget)."""
        return S.recent_window(self.budget(layer, length))

    def select(self, layer: int, row: int, length: int, keys: torch.Tensor, queries: torch.Tensor | None, attn, layout: BatchLayout) -> torch.Tensor:
        """Kept positions ``[H_kv, n]`` of one row (positions within its real tokens)."""
        raise NotImplementedError

    # -------------------------------------------------------------- Participant
    def query_tail(self, layer: int, layout: BatchLayout) -> int | None:
        if self.needs_queries == "none":
            return 0
        if self.needs_queries == "all":
            return layout.seq_valid.shape[1]
        return max(self.window(layer, L) for L in layout.real_lengths())

    def select_from_column_sums(self, layer: int, row: int, length: int, keys: torch.Tensor, sums: torch.Tensor, layout: BatchLayout) -> torch.Tensor:
        """As :meth:`select`, for the methods that rank by whole-prompt column sums
        (``column_sum_chunk``): ``sums`` ``[H_q, L]`` came out of the prefill's attention."""
        raise NotImplementedError

    def on_prefill_column_sums(self, layer, layout, attn, sums, keys, values):
        selections, starts = [], []
        for (r, L, k_row, _, start), row_sums in zip(row_slices(layout, keys, None), sums, strict=True):
            selections.append(self.select_from_column_sums(layer, r, L, k_row, row_sums, layout))
            starts.append(start)
        return layout_from_rows(selections, starts, keys.device)

    def on_prefill_kv(self, layer, layout, attn, q_tail, keys, values):
        selections, starts = [], []
        for r, L, k_row, q_row, start in row_slices(layout, keys, q_tail):
            selections.append(self.select(layer, r, L, k_row, q_row, attn, layout))
            starts.append(start)
        return layout_from_rows(selections, starts, keys.device)


@dataclass
class WindowedEviction(EvictionMethod):
    """An eviction method with a recent / observation window of its own size."""

    ratio: float = 0.4  # share of each sample's real prompt kept, in (0, 1]
    window_size: int = 0  # recent tokens always kept (the observation window of the scorers); 0 = max(1, 10% of the budget)

    def validate(self) -> None:
        super().validate()
        self.check_range("window_size", 0, None)

    def window(self, layer: int, length: int) -> int:
        return S.recent_window(self.budget(layer, length), self.window_size)


def row_seed(seed: int, layer: int, layout: BatchLayout, row: int) -> int:
    """A seed that depends on the sample's own tokens, so a sample draws the same
    entries alone and inside any batch."""
    ids = layout.input_ids[row][layout.prompt_mask[row]].to(torch.int64).cpu().numpy().tobytes()
    return zlib.crc32(ids, zlib.crc32(f"{seed}:{layer}".encode()))
