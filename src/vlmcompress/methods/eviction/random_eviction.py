"""Random eviction: a seeded uniform draw of the older tokens plus the recent window,
the floor any scoring method has to beat (as kvpress's RandomPress)."""

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..base import METHODS
from . import scores as S
from .base import WindowedEviction, row_seed


@METHODS.register
@dataclass
class RandomEviction(WindowedEviction):
    name: ClassVar[str] = "random"

    seed: int = 0  # the draw depends on the seed, the layer and the sample's own tokens

    def validate(self) -> None:
        super().validate()

    def select(self, layer, row, length, keys, queries, attn, layout):
        gen = torch.Generator().manual_seed(row_seed(self.seed, layer, layout, row))
        return S.random_select(length, self.budget(layer, length), self.window(layer, length), keys.shape[0], gen).to(keys.device)
