"""Qwen2-VL and Qwen2.5-VL: a vision tower called ``visual`` whose ``merger`` is the
projector, and 3-D multimodal rotary positions (M-RoPE: temporal, height, width)."""

from __future__ import annotations

import importlib

import torch

from ..errors import ConfigError
from .base import ADAPTERS, LLAMA_CLIP_PREDECESSORS, ModelAdapter, VisionScoring


@ADAPTERS.register
class Qwen2VLAdapter(ModelAdapter):
    name = "qwen2_vl"
    model_types = ("qwen2_vl", "qwen2_5_vl")
    vision_names = ("visual",)
    projector_names = ("merger",)
    # the vision blocks: norm1 -> attn.qkv; norm2 -> mlp.fc1 (Qwen2-VL) or mlp.gate_proj /
    # mlp.up_proj (Qwen2.5-VL's gated MLP)
    scale_predecessors = {
        **LLAMA_CLIP_PREDECESSORS,
        "mlp.fc1": ("layer_norm2", "norm2"),
        "attn.qkv": ("norm1",),
        "mlp.gate_proj": ("post_attention_layernorm", "norm2"),
        "mlp.up_proj": ("post_attention_layernorm", "norm2"),
    }

    def scoring_block(self) -> int:
        """The vision block whose attention scores the patches: the last full-attention
        block before the final one (Qwen2-VL, where every block attends to the whole
        image: ``blocks[-2]``, where EffiVLM-Bench scores; Qwen2.5-VL: the last of
        ``fullatt_block_indexes`` before the final block, e.g. 23 of 32, since its other
        blocks attend within windows only and their scores would not compare patches
        across windows), else the final block (a one-block tower, or no earlier
        full-attention block)."""
        n = len(self.vision_layers)
        full = getattr(self.model.config.vision_config, "fullatt_block_indexes", None)
        full = range(n) if full is None else sorted(i for i in full if 0 <= i < n)
        earlier = [i for i in full if i < n - 1]
        return earlier[-1] if earlier else n - 1

    def vision_scoring(self, method: str) -> VisionScoring:
        """The attention patches receive in :meth:`scoring_block` (as EffiVLM-Bench scores
        VisionZip and PruMerge+ on Qwen2-VL); the PatchMerger packs each ``m x m`` window
        (``m = spatial_merge_size``) of patches, ``m*m`` consecutive rows in the
        processor's patch order, into one token, and the pruners select and merge its
        output.  Qwen2.5-VL's tower permutes the merged tokens into attention windows
        before its blocks and restores their order after the merger; the pruners see the
        tokens in raster order (``window_index``), so strided picks and grids are spatial."""
        blocks = self.vision_layers
        attn = blocks[self.scoring_block()].attn
        rotary = getattr(importlib.import_module(type(attn).__module__), "apply_rotary_pos_emb_vision", None)
        if rotary is None:
            raise ConfigError(f"{method}: no apply_rotary_pos_emb_vision next to {type(attn).__name__}; cannot score its patches")
        vcfg = self.model.config.vision_config
        group = int(vcfg.spatial_merge_size) ** 2
        window_index = None
        if getattr(vcfg, "window_size", None) and getattr(vcfg, "fullatt_block_indexes", None) is not None:
            window_index = self._window_index
        return VisionScoring("merger", attn, self.projector, group=group, rotary=rotary, window_index=window_index)

    def _window_index(self, grid_thw: torch.Tensor) -> torch.Tensor:
        """Qwen2.5-VL: the raster index of the merged token at each row of the tower's
        window order (the tower's own computation)."""
        tower = self.vision_tower
        if hasattr(tower, "get_window_index"):  # transformers 4.x
            return tower.get_window_index(grid_thw)[0]
        from transformers.vision_utils import get_vision_window_index

        vcfg = self.model.config.vision_config
        return get_vision_window_index(grid_thw, spatial_merge_size=vcfg.spatial_merge_size, window_size=vcfg.window_size, patch_size=vcfg.patch_size)[0]

    def position_ids(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[3, B, T]`` M-RoPE positions, computed by the model itself."""
        inner = self.model.model
        position_ids, _ = inner.get_rope_index(
            input_ids=batch["input_ids"],
            mm_token_type_ids=batch["mm_token_type_ids"],
            image_grid_thw=batch.get("image_grid_thw"),
            attention_mask=batch["attention_mask"],
        )
        return position_ids
