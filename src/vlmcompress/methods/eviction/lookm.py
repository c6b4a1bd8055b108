"""LOOK-M (Wan et al., 2024, "LOOK-M: Look-Once Optimization in KV Cache for Efficient
Multimodal Long-Context Inference"): text-prior eviction (text tokens are kept before
image tokens; among each, heavy hitters by accumulated attention) with a recent window,
and the evicted entries optionally merged into the kept entry whose key they resemble
most, so their information is not simply lost.  ``merge`` picks LOOK-M's strategy
(:func:`.scores.lookm_merge`): ``average`` (averaged merging), ``pivot`` (pivotal
merging: each evicted entry is first averaged with its pivot; what LOOK-M's released
script and EffiVLM-Bench run), ``weighted`` (weighted by the cosine similarity, with
LOOK-M's filter of the least similar entries) or ``none``.

The budget ``B = int(ratio L)`` splits into a recent window ``max(1, int(0.1 B))`` and
``B`` minus that of heavy hitters (EffiVLM-Bench takes ``int(0.9 ratio L)`` and
``int(0.1 ratio L)`` separately, each at least 1, which can differ by one entry)."""

from dataclasses import dataclass
from typing import ClassVar, Literal

from ..base import METHODS
from . import scores as S
from .base import EvictionMethod
from ..layout.queries import attention_scaling


@METHODS.register
@dataclass
class LookM(EvictionMethod):
    name: ClassVar[str] = "lookm"
    needs_queries: ClassVar[str] = "all"

    ratio: float = 0.4  # share of the prompt kept, in (0, 1]
    merge: Literal["average", "pivot", "weighted", "none"] = "average"  # how evicted entries join their most similar kept one: average | pivot (averaged with it first; EffiVLM-Bench) | weighted (scaled by similarity) | none
    chunk: int = 256  # queries scored at a time

    def validate(self) -> None:
        super().validate()
        self.check_choice("merge", S.LOOKM_MERGES)
        self.check_range("chunk", 1, None)

    def select(self, layer, row, length, keys, queries, attn, layout):
        image = layout.seq_image[row, layout.seq_image.shape[1] - length :]
        return S.lookm_select(queries, keys, attention_scaling(attn), self.budget(layer, length), image, self.chunk)

    def on_prefill_kv(self, layer, layout, attn, q_tail, keys, values):
        index, valid = super().on_prefill_kv(layer, layout, attn, q_tail, keys, values)
        if self.merge == "none":
            return index, valid
        d, dv = keys.shape[-1], values.shape[-1]
        k_keep = keys.gather(2, index[..., None].expand(-1, -1, -1, d)).clone()
        v_keep = values.gather(2, index[..., None].expand(-1, -1, -1, dv)).clone()
        S_len = keys.shape[2]
        for r, L in enumerate(layout.real_lengths()):
            start = S_len - L
            n = int(valid[r].sum())
            keep = index[r, :, index.shape[2] - n :] - start
            mk, mv = S.lookm_merge(keys[r, :, start:], values[r, :, start:], keep, self.merge)
            k_keep[r, :, index.shape[2] - n :] = mk
            v_keep[r, :, index.shape[2] - n :] = mv
        return index, valid, k_keep, v_keep
