"""FastV (Chen et al., 2024, "An Image is Worth 1/2 Tokens After Layer 2"): after
layer K-1 of the language model, rank the image tokens by the attention they receive
(averaged over heads; from the last prompt query as in the paper, or from all queries
as in EffiVLM-Bench) and drop the rest from layer K on.  Kept tokens keep their
original position ids; layers before K keep every token in their cache."""

from dataclasses import dataclass
from typing import ClassVar

from ...errors import ConfigError
from ..base import METHODS
from ..layout import LayoutMethod, row_slices
from ..layout import attention as A
from ..layout.queries import attention_scaling
from .select import fastv_keep


@METHODS.register
@dataclass
class FastV(LayoutMethod):
    name: ClassVar[str] = "fastv"
    hook: ClassVar[str] = "attention"

    ratio: float = 0.5  # share of the visual tokens kept, in (0, 1]
    layer: int = 2  # K: tokens are dropped before decoder layer K, ranked at layer K-1
    query: str = "last"  # last (the paper) | all (EffiVLM-Bench)
    chunk: int = 256  # queries scored at a time when query=all

    def validate(self) -> None:
        self.check_range("ratio", 0, 1, low_open=True)
        self.check_range("layer", 1, None)
        self.check_choice("query", ("last", "all"))
        self.check_range("chunk", 1, None)

    def check_model(self, ctx) -> None:
        super().check_model(ctx)
        self.setup(ctx)

    def setup(self, ctx) -> None:
        n = len(ctx.adapter.decoder_layers)
        if self.layer >= n:
            raise ConfigError(f"{self.name}: layer={self.layer} is out of range [1, {n - 1}] for a {n}-layer decoder")

    def query_tail(self, layer, layout):
        if layer != self.layer - 1:
            return None
        return 1 if self.query == "last" else layout.seq_valid.shape[1]

    def on_prefill_kv(self, layer, layout, attn, q_tail, keys, values):
        image = layout.seq_image
        keep = layout.seq_valid.clone()
        scale = attention_scaling(attn)
        for r, L, k_row, q_row, start in row_slices(layout, keys, q_tail):
            if self.query == "last":
                scores = A.window_attention(q_row, k_row, scale)[:, 0].mean(0)
            else:
                scores = A.attention_column_sums(q_row, k_row, scale, self.chunk).mean(0) / L
            keep[r, start:] = fastv_keep(scores, image[r, start:], self.ratio)
        layout.scratch["fastv_keep"] = keep
        return None  # layer K-1 itself stores everything

    def keep_before(self, layer, layout):
        if layer == self.layer:
            return layout.scratch.pop("fastv_keep", None)
        return None
