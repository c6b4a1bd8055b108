"""SnapKV (Li et al., 2024, "SnapKV: LLM Knows What You are Looking for Before
Generation"): the last ``window`` prompt queries (the observation window) vote for
the earlier keys; votes are pooled over neighbouring positions so that kept tokens come
with their context; per KV head, the top ``budget - window`` plus the window are kept."""

from dataclasses import dataclass
from typing import ClassVar

from ...errors import ConfigError
from ..base import METHODS
from . import scores as S
from .base import WindowedEviction
from ..layout.queries import attention_scaling


@METHODS.register
@dataclass
class SnapKV(WindowedEviction):
    name: ClassVar[str] = "snapkv"
    needs_queries: ClassVar[str] = "window"

    kernel: int = 5  # pooling width over positions (odd; 1 = no pooling)
    pooling: str = "avg"  # avg | max

    def validate(self) -> None:
        super().validate()
        self.check_range("kernel", 1, None)
        if self.kernel % 2 == 0:
            raise ConfigError(f"{self.name}: kernel={self.kernel} must be odd (pooling keeps the length)")
        self.check_choice("pooling", ("avg", "max"))

    def select(self, layer, row, length, keys, queries, attn, layout):
        budget = self.budget(layer, length)
        window = self.window(layer, length)
        q = queries[:, queries.shape[1] - window :]
        return S.snapkv_select(q, keys, attention_scaling(attn), budget, window, self.kernel, self.pooling)
