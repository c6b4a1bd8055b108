"""Analytic FLOPs of a decoder's prefill and decode steps, with per-layer token counts.

One multiply-add = 2 FLOPs.  Per layer and token: the q/k/v/o projections
(``2 d (H_q D + 2 H_kv D) + 2 H_q D d``) and a gated MLP (``3 * 2 d m``); attention adds
``4 H_q D`` per (query, visible key) pair (``QK^T`` and ``AV``).  The LM head is counted
for the one position whose logits generation reads.  FastV's paper uses the same
counting without GQA and gating (``4nd^2 + 2n^2d + 2ndm`` per layer).

Token-dropping methods change ``n`` from a layer on; eviction changes only the keys a
decoded token sees.  Embedding lookups, norms and the vision tower are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DecoderShape:
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    layers: int

    @classmethod
    def from_adapter(cls, adapter) -> "DecoderShape":
        cfg = adapter.text_config
        return cls(
            hidden=cfg.hidden_size,
            intermediate=cfg.intermediate_size,
            heads=cfg.num_attention_heads,
            kv_heads=adapter.text_kv_heads,
            head_dim=adapter.text_head_dim,
            vocab=cfg.vocab_size,
            layers=cfg.num_hidden_layers,
        )

    def linear_per_token(self) -> int:
        d, D = self.hidden, self.head_dim
        proj = 2 * d * (self.heads * D + 2 * self.kv_heads * D) + 2 * self.heads * D * d
        return proj + 3 * 2 * d * self.intermediate

    def attention_per_pair(self) -> int:
        return 4 * self.heads * self.head_dim


def prefill_flops(shape: DecoderShape, tokens_per_layer: list[float]) -> float:
    """Causal prefill where layer ``l`` processes ``tokens_per_layer[l]`` tokens."""
    total = 0.0
    for n in tokens_per_layer:
        total += n * shape.linear_per_token() + shape.attention_per_pair() * n * (n + 1) / 2
    return total + 2 * shape.hidden * shape.vocab


def decode_flops(shape: DecoderShape, cache_per_layer: list[float]) -> float:
    """One decoded token when layer ``l`` holds ``cache_per_layer[l]`` entries before it."""
    total = 0.0
    for kv in cache_per_layer:
        total += shape.linear_per_token() + shape.attention_per_pair() * (kv + 1)
    return total + 2 * shape.hidden * shape.vocab
