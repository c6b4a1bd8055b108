"""KeyDiff (Park et al., 2025, "KeyDiff: Key Similarity-Based KV Cache Eviction for
Long-Context LLM Inference in Resource-Constrained Environments"; kvpress's
``KeyDiffPress``, applied once to the whole prompt): each KV head keeps the ``B`` keys
least similar (cosine) to the mean of its normalised keys, the most distinctive ones.
No query is needed and no recent window is protected."""

from dataclasses import dataclass
from typing import ClassVar

from ..base import METHODS
from . import scores as S
from .base import EvictionMethod


@METHODS.register
@dataclass
class KeyDiff(EvictionMethod):
    name: ClassVar[str] = "keydiff"

    ratio: float = 0.4  # share of the prompt kept, in (0, 1]

    def select(self, layer, row, length, keys, queries, attn, layout):
        return S.keydiff_select(keys, self.budget(layer, length))
