"""TOVA (Oren et al., 2024, "Transformers are Multi-State RNNs"; kvpress's ``TOVAPress``,
applied once at the end of prefill): the last prompt token's attention, averaged over
all query heads, ranks the earlier tokens; every KV head keeps the same ``B - 1`` best
and the last token."""

from dataclasses import dataclass
from typing import ClassVar

from ..base import METHODS
from . import scores as S
from .base import EvictionMethod
from ..layout.queries import attention_scaling


@METHODS.register
@dataclass
class TOVA(EvictionMethod):
    name: ClassVar[str] = "tova"
    needs_queries: ClassVar[str] = "window"

    ratio: float = 0.4  # share of the prompt kept, in (0, 1]

    def window(self, layer: int, length: int) -> int:
        return 1  # the last prompt token: its query scores, and it is always kept

    def select(self, layer, row, length, keys, queries, attn, layout):
        return S.tova_select(queries[:, -1:], keys, attention_scaling(attn), self.budget(layer, length))
