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
    # the vision blocks: norm1 -> attn.qkv, norm2 -> mlp.fc1
    scale_predecessors = {**LLAMA_CLIP_PREDECESSORS, "mlp.fc1": ("layer_norm2", "norm2"), "attn.qkv": ("norm1",)}

    def vision_scoring(self, method: str) -> VisionScoring:
        """The attention patches receive in the second-to-last vision block (where
        EffiVLM-Bench scores VisionZip and PruMerge+ on Qwen2-VL; the only block of a
        one-block tower); the PatchMerger packs each ``m x m`` window (``m =
        spatial_merge_size``) of patches, ``m*m`` consecutive rows in the processor's
        patch order, into one token, and the pruners select and merge its output."""
        if self.model.config.model_type == "qwen2_5_vl":
            raise ConfigError(
                f"{method}: Qwen2.5-VL's tower permutes patches into attention windows before its merger; only Qwen2-VL's merger tower is supported"
            )
        blocks = self.vision_layers
        attn = blocks[max(0, len(blocks) - 2)].attn
        rotary = getattr(importlib.import_module(type(attn).__module__), "apply_rotary_pos_emb_vision")
        group = int(self.model.config.vision_config.spatial_merge_size) ** 2
        return VisionScoring("merger", attn, self.projector, group=group, rotary=rotary)

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
