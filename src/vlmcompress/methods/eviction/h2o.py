"""H2O (Zhang et al., 2023, "H2O: Heavy-Hitter Oracle for Efficient Generative
Inference of Large Language Models"): keep the tokens that received the most attention
over the whole prompt (column sums of the causal attention, accumulated over query
chunks so memory stays linear in the prompt length) plus a recent window."""

from dataclasses import dataclass
from typing import ClassVar

from ..base import METHODS
from . import scores as S
from .base import WindowedEviction
from ..layout.queries import attention_scaling


@METHODS.register
@dataclass
class H2O(WindowedEviction):
    name: ClassVar[str] = "h2o"
    needs_queries: ClassVar[str] = "all"

    per_head: bool = True  # each KV head keeps its own heavy hitters (else one set for all heads)
    chunk: int = 256  # queries scored at a time (memory ~ heads x chunk x prompt)

    def validate(self) -> None:
        super().validate()
        self.check_range("chunk", 1, None)

    def select(self, layer, row, length, keys, queries, attn, layout):
        return S.h2o_select(queries, keys, attention_scaling(attn), self.budget(layer, length), self.window(layer, length), self.per_head, self.chunk)

    def column_sum_chunk(self, layer, layout):
        return self.chunk

    def select_from_column_sums(self, layer, row, length, keys, sums, layout):
        return S.h2o_keep(sums, keys.shape[0], self.budget(layer, length), self.window(layer, length), self.per_head)
