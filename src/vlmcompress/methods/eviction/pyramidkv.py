"""PyramidKV (Cai et al., 2024, "PyramidKV: Dynamic KV Cache Compression based on
Pyramidal Information Funneling"): SnapKV scoring with per-layer budgets falling
linearly from the first layer to the last (lower layers attend broadly, upper layers
narrowly), the mean over layers being (about) the uniform budget ``B``.

Two reference budget rules (``budget_rule``, see :func:`.scores.pyramid_budgets`):

* ``kvcache_factory`` (default): the authors' code (KVCache-Factory), which EffiVLM-Bench
  copies: the pyramid is built on the selected part ``B - w`` (``min = (B - w) // beta``,
  ``max = 2 (B - w) - min``, integer steps) and a prompt shorter than ``2 (B - w)``
  keeps the uniform budget on every layer.  Default because it is PyramidKV's own
  rule and the one of the EffiVLM-Bench grid this package reproduces.
* ``kvpress``: kvpress's ``PyramidKVPress``: the pyramid is built on the total budget,
  window included (``min = B / beta``, ``max = 2 B - min``, rounded real steps), and
  falls back to the uniform budget whenever ``min`` is below the window.
* ``linear``: this package's earlier rule (the kvcache_factory formula with real steps,
  applied wherever it fits, no short-prompt fallback), kept to reproduce older runs.
"""

from dataclasses import dataclass
from typing import ClassVar, Literal

from ..base import METHODS
from . import scores as S
from .snapkv import SnapKV


@METHODS.register
@dataclass
class PyramidKV(SnapKV):
    name: ClassVar[str] = "pyramidkv"

    # ratio: on average over layers; window_size: 10% of the uniform budget when 0
    beta: float = 20.0  # steepness: the last layer keeps about (B - w) / beta selected tokens (B / beta entries under budget_rule=kvpress)
    budget_rule: Literal["kvcache_factory", "kvpress", "linear"] = "kvcache_factory"  # kvcache_factory: pyramid on B - w, uniform below 2 (B - w) tokens (PyramidKV's code, EffiVLM-Bench) | kvpress: pyramid on B, uniform when B / beta < w | linear: earlier rule of this package

    def validate(self) -> None:
        super().validate()
        self.check_range("beta", 1, None)
        self.check_choice("budget_rule", S.PYRAMID_RULES)

    def _uniform(self, length: int) -> tuple[int, int]:
        budget = S.kv_budget(length, self.ratio)
        return budget, S.recent_window(budget, self.window_size)

    def budget(self, layer: int, length: int) -> int:
        budget, window = self._uniform(length)
        return S.pyramid_budgets(length, budget, window, self._shape.layers, self.beta, self.budget_rule)[layer]

    def window(self, layer: int, length: int) -> int:
        return min(self._uniform(length)[1], self.budget(layer, length))
