"""VL-Cache (Tu et al., 2024, "VL-Cache: Sparsity and Modality-Aware KV Cache
Compression for Vision-Language Model Inference Acceleration"): tokens are scored by
the attention of the *post-vision* prompt queries (those after the last image token),
and each layer's budget is proportional to its attention density (1 - sparsity, the
share of post-vision attention entries below 1% of their row maximum), the total
matching the uniform budget.  Budgets need every layer's sparsity, so the selection is
made after the prefill forward and applied in place to the cache's key/value tensors
(a cache layer that stores something else cannot be combined with vlcache)."""

from dataclasses import dataclass
from typing import ClassVar


from ...errors import ConfigError
from ..base import METHODS
from . import scores as S
from ...footprint import PerSampleKVCache
from ..layout import layout_from_rows, row_slices
from ..layout.queries import attention_scaling
from .base import WindowedEviction


@METHODS.register
@dataclass
class VLCache(WindowedEviction):
    name: ClassVar[str] = "vlcache"
    refuses: ClassVar[dict[str, str]] = {
        "kv_cache": "VL-Cache narrows each layer's cache after prefill, which a quantized cache (every entry quantized once, as it arrives) cannot undo",
    }
    needs_queries: ClassVar[str] = "all"

    # ratio: on average over layers; window_size: 10% of each layer's own budget when 0
    min_post_vision: int = 1  # post-vision queries used at least (the last ones when fewer follow the image)

    def validate(self) -> None:
        super().validate()
        self.check_range("min_post_vision", 1, None)

    def on_prefill_kv(self, layer, layout, attn, q_tail, keys, values):
        image = layout.seq_image
        rows = layout.scratch.setdefault("vlcache", {})
        for r, L, k_row, q_row, start in row_slices(layout, keys, q_tail):
            img = image[r, start:].nonzero()
            n_post = L - (int(img.max()) + 1) if img.numel() else L
            n_post = min(L, max(self.min_post_vision, n_post))
            scores, sparsity = S.vlcache_scores(q_row[:, q_row.shape[1] - n_post :], k_row, attention_scaling(attn))
            rows.setdefault(r, {})[layer] = (scores, sparsity, start, L)
        return None  # stored in full now, narrowed in finish_prefill

    def finish_prefill(self, layout, cache) -> None:
        rows = layout.scratch.pop("vlcache", None)
        if not rows:
            return
        layers = sorted(next(iter(rows.values())))
        sel = {l: [] for l in layers}
        starts = []
        for r in sorted(rows):
            per = rows[r]
            L = per[layers[0]][3]
            starts.append(per[layers[0]][2])
            budgets = S.vlcache_budgets([per[l][1] for l in layers], S.kv_budget(L, self.ratio), L)
            for l, b in zip(layers, budgets):
                sel[l].append(S.top_with_window(per[l][0], b, S.recent_window(b, self.window_size)))
        if isinstance(cache, PerSampleKVCache):
            raise ConfigError("vlcache: narrows the cache after prefill, which a quantized KV cache (stored once, per sample) cannot undo; stack vlcache without a kv_cache method")
        for l in layers:
            layer = cache.layers[l]
            k, v = layer.keys, layer.values
            index, valid = layout_from_rows(sel[l], starts, k.device)
            layer.keys = k.gather(2, index[..., None].expand(-1, -1, -1, k.shape[-1])).contiguous()
            layer.values = v.gather(2, index[..., None].expand(-1, -1, -1, v.shape[-1])).contiguous()
            layout.record_kept(l, index, valid)
