"""PyramidKV (Cai et al., 2024, "PyramidKV: Dynamic KV Cache Compression based on
Pyramidal Information Funneling"): SnapKV scoring with per-layer budgets falling
linearly from the first layer to the last (lower layers attend broadly, upper layers
narrowly); the mean budget over layers is the uniform one."""

from dataclasses import dataclass
from typing import ClassVar

from ..base import METHODS
from . import scores as S
from .snapkv import SnapKV


@METHODS.register
@dataclass
class PyramidKV(SnapKV):
    name: ClassVar[str] = "pyramidkv"

    # ratio: on average over layers; window_size: 10% of the uniform budget when 0
    beta: float = 20.0  # steepness: the last layer keeps (B - w) / beta selected tokens

    def validate(self) -> None:
        super().validate()
        self.check_range("beta", 1, None)

    def _uniform(self, length: int) -> tuple[int, int]:
        budget = S.kv_budget(length, self.ratio)
        return budget, S.recent_window(budget, self.window_size)

    def budget(self, layer: int, length: int) -> int:
        budget, window = self._uniform(length)
        return S.pyramid_budgets(length, budget, window, self._shape.layers, self.beta)[layer]

    def window(self, layer: int, length: int) -> int:
        return min(self._uniform(length)[1], self.budget(layer, length))
