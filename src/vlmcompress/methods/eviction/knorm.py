"""Knorm (Devoto et al., 2024, "A Simple and Effective L2 Norm-Based Strategy for KV
Cache Compression"; kvpress's ``KnormPress``): keys with a LOW L2 norm draw high
attention, so each KV head keeps the ``B`` keys of lowest norm.  No query is needed and,
as in kvpress, no recent window is protected."""

from dataclasses import dataclass
from typing import ClassVar

from ..base import METHODS
from . import scores as S
from .base import EvictionMethod


@METHODS.register
@dataclass
class Knorm(EvictionMethod):
    name: ClassVar[str] = "knorm"

    ratio: float = 0.4  # share of the prompt kept, in (0, 1]

    def select(self, layer, row, length, keys, queries, attn, layout):
        return S.knorm_select(keys, self.budget(layer, length))
