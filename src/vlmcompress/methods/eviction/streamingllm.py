"""StreamingLLM (Xiao et al., 2024, "Efficient Streaming Language Models with Attention
Sinks"): keep the first ``sink`` tokens, which soak up attention whatever they say, and
the most recent ones."""

from dataclasses import dataclass
from typing import ClassVar

from ..base import METHODS
from . import scores as S
from .base import EvictionMethod


@METHODS.register
@dataclass
class StreamingLLM(EvictionMethod):
    name: ClassVar[str] = "streamingllm"

    ratio: float = 0.4  # share of the prompt kept, in (0, 1]
    sink: int = 4  # attention-sink tokens kept at the start (the paper's 4)

    def validate(self) -> None:
        super().validate()
        self.check_range("sink", 0, None)

    def select(self, layer, row, length, keys, queries, attn, layout):
        return S.streamingllm_select(length, self.budget(layer, length), self.sink, keys.shape[0], keys.device)
