"""Shared pieces of the pruning methods: mask selection (per row, per layer, N:M), the
``sparsity`` / ``nm`` knobs and their checks, and applying a mask."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch

from ...errors import ConfigError
from .common import WeightMethod

_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_nm(nm: str | None) -> tuple[int, int] | None:
    """``"2:4"`` -> ``(2, 4)``: keep N of every M consecutive input weights."""
    if nm is None or str(nm).strip().lower() in ("", "none"):
        return None
    m = _NM.match(str(nm))
    if not m or not (0 < int(m.group(1)) < int(m.group(2))):
        raise ConfigError(f"nm={nm!r} is not allowed; expected 'N:M' with 0 < N < M, e.g. 2:4")
    return int(m.group(1)), int(m.group(2))


def row_prune_mask(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """``True`` = pruned: the ``int(in · sparsity)`` lowest scores of every row (Wanda's
    per-output comparison group).  Ties are broken by column order (stable sort)."""
    k = int(score.shape[1] * sparsity)
    mask = torch.zeros_like(score, dtype=torch.bool)
    if k:
        idx = torch.sort(score, dim=1, stable=True).indices[:, :k]
        mask.scatter_(1, idx, True)
    return mask


def layer_prune_mask(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """``True`` = pruned: the ``int(numel · sparsity)`` lowest scores of the whole layer."""
    k = int(score.numel() * sparsity)
    mask = torch.zeros(score.numel(), dtype=torch.bool, device=score.device)
    if k:
        mask[torch.sort(score.flatten(), stable=True).indices[:k]] = True
    return mask.view_as(score)


def nm_prune_mask(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """``True`` = pruned: in every M consecutive columns of each row, all but the N
    highest scores."""
    rows, cols = score.shape
    if cols % m:
        raise ConfigError(f"N:M sparsity {n}:{m} needs input features divisible by {m}, got {cols}")
    groups = score.reshape(rows, cols // m, m)
    idx = torch.sort(groups, dim=-1, stable=True).indices[..., : m - n]
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(-1, idx, True)
    return mask.reshape(rows, cols)


@dataclass
class WeightPruner(WeightMethod):
    """Base of the pruning methods: the knobs they share, declared and checked here once."""

    storage_kind = "dense"
    family: ClassVar[str | None] = "weight_pruning"

    sparsity: float = 0.5  # fraction of the weights removed (per output row, or per layer for magnitude), in [0, 1)
    nm: Optional[str] = None  # "N:M" (e.g. 2:4): keep N of every M consecutive inputs; overrides sparsity
    targets: str = "decoder"  # parts (decoder, vision, projector, lm_head) or regexes, joined by '+'

    def validate(self) -> None:
        super().validate()
        self.check_range("sparsity", 0, 1, high_open=True)
        parse_nm(self.nm)

    @property
    def n_m(self) -> tuple[int, int] | None:
        return parse_nm(self.nm)

    def is_noop(self) -> bool:
        return self.n_m is None and self.sparsity == 0

    def check_layers(self, linears) -> None:
        nm = self.n_m
        if nm is not None:
            for name, lin in linears.items():
                if lin.in_features % nm[1]:
                    raise ConfigError(f"{self.name}: nm={self.nm} needs input features divisible by {nm[1]}; layer {name!r} has {lin.in_features}")


def apply_pruned(lin, new_weight: torch.Tensor, report, n_m) -> None:
    lin.weight.data.copy_(new_weight.to(lin.weight.dtype))
    report.add_pruned(lin.weight.data, n_m)
