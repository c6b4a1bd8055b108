"""Observed attention (kvpress's ``ObservedAttentionPress``, the H2O family): a key's
score is the attention it receives from the prompt's queries, summed over every query
that can see it and divided by their number (``L - j`` for key ``j``, so late tokens are
not penalised for being seen by fewer queries), averaged over the query heads of its
KV head; each KV head keeps its ``B`` best, with no protected window.  Column sums are
accumulated over query chunks, as for H2O."""

from dataclasses import dataclass
from typing import ClassVar

from ..base import METHODS
from . import scores as S
from .base import EvictionMethod
from ..layout.queries import attention_scaling


@METHODS.register
@dataclass
class ObservedAttention(EvictionMethod):
    name: ClassVar[str] = "observed_attention"
    needs_queries: ClassVar[str] = "all"

    ratio: float = 0.4  # share of the prompt kept, in (0, 1]
    chunk: int = 256  # queries scored at a time (memory ~ heads x chunk x prompt)

    def validate(self) -> None:
        super().validate()
        self.check_range("chunk", 1, None)

    def select(self, layer, row, length, keys, queries, attn, layout):
        return S.observed_attention_select(queries, keys, attention_scaling(attn), self.budget(layer, length), self.chunk)

    def column_sum_chunk(self, layer, layout):
        return self.chunk

    def select_from_column_sums(self, layer, row, length, keys, sums, layout):
        return S.observed_attention_keep(sums, keys.shape[0], self.budget(layer, length))
