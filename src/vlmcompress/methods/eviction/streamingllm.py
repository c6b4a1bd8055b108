"""StreamingLLM (Xiao et al., 2024, "Efficient Streaming Language Models with Attention
Sinks"): keep the first tokens, which soak up attention whatever they say, and the most
recent ones.

Two conventions split the budget ``B`` (``split``):

* ``sinks`` (default; the paper and kvpress's ``StreamingLLMPress``): the first ``sink``
  tokens (4 in the paper) and the most recent ``B - sink``;
* ``effivlm`` (EffiVLM-Bench's ``StreamingLLMKVCluster``): the first ``B - w`` tokens and
  the last ``w = max(1, int(0.1 B))`` (the design's recent window); ``sink`` is unused.
"""

from dataclasses import dataclass
from typing import ClassVar, Literal

from ..base import METHODS
from . import scores as S
from .base import EvictionMethod


@METHODS.register
@dataclass
class StreamingLLM(EvictionMethod):
    name: ClassVar[str] = "streamingllm"

    ratio: float = 0.4  # share of the prompt kept, in (0, 1]
    sink: int = 4  # attention-sink tokens kept at the start (the paper's 4); split=sinks only
    split: Literal["sinks", "effivlm"] = "sinks"  # sinks: `sink` first + most recent rest (paper, kvpress) | effivlm: first B - w + last w, w = max(1, int(0.1 B)) (EffiVLM-Bench)

    def validate(self) -> None:
        super().validate()
        self.check_range("sink", 0, None)
        self.check_choice("split", ("sinks", "effivlm"))

    def sinks(self, layer: int, length: int) -> int:
        """Tokens kept at the start of the prompt."""
        if self.split == "effivlm":
            return self.budget(layer, length) - self.window(layer, length)
        return self.sink

    def select(self, layer, row, length, keys, queries, attn, layout):
        return S.streamingllm_select(length, self.budget(layer, length), self.sinks(layer, length), keys.shape[0], keys.device)
