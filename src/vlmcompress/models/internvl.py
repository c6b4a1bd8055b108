"""InternVL as transformers implements it natively (``InternVLForConditionalGeneration``,
model type ``internvl``, e.g. ``OpenGVLab/InternVL3-1B-hf``): an InternViT tower with a
CLS token over fixed-size tiles (the processor cuts an image into tiles plus a
thumbnail, each tile ``image_seq_length`` placeholders between ``<img>`` and ``</img>``),
a pixel shuffle that packs each 2x2 square of patches into one token (``downsample_ratio
= 0.5``), the ``multi_modal_projector`` MLP, and a Qwen2 (or Llama) decoder."""

from __future__ import annotations

from torch import nn

from ..errors import ConfigError
from .base import ADAPTERS, LLAMA_CLIP_PREDECESSORS, ModelAdapter, VisionScoring, find_module


@ADAPTERS.register
class InternVLAdapter(ModelAdapter):
    name = "internvl"
    model_types = ("internvl",)
    # InternViT layers: layernorm_before -> attention.{q,k,v}_proj, attention.v_proj ->
    # attention.projection_layer, layernorm_after -> mlp.fc1 (the decoder is Qwen2 / Llama)
    scale_predecessors = {
        **LLAMA_CLIP_PREDECESSORS,
        "mlp.fc1": ("layer_norm2", "layernorm_after"),
        "attention.q_proj": ("layernorm_before",),
        "attention.k_proj": ("layernorm_before",),
        "attention.v_proj": ("layernorm_before",),
        "attention.projection_layer": ("attention.v_proj",),
    }

    @property
    def vision_layers(self) -> nn.ModuleList:
        """InternViT keeps its layers in ``encoder.layer``."""
        layers = find_module(self.vision_tower, ("layer", "layers"))
        if not isinstance(layers, nn.ModuleList):
            raise ConfigError(f"{type(self.vision_tower).__name__}: no encoder layer list found")
        return layers

    def vision_scoring(self, method: str) -> VisionScoring:
        """EffiVLM-Bench prunes InternVL2.5's visual tokens per tile, after the projector
        (``mlp1``), both methods reading the tower's ``layers[-2]`` (its ``layer_idx == 22``
        of 24, the layer before the feature layer ``select_layer=-1``) with the CLS row
        and column dropped, every score and key averaged over the 2x2 square of patches
        one pixel-shuffled token holds (``view(16, 2, 16, 2).mean((2, 4))``).  Followed
        here, relative to ``vision_feature_layer``:

        * **VisionZip**: the attention a patch receives from the other patches, averaged
          over heads and queries; keys averaged over heads (``k.mean(dim=1)``).
        * **PruMerge+**: the CLS query's attention under one full-width softmax
          (``q . k * C ** -0.5`` over the undivided width, the CLS column dropped after the
          softmax); keys with the heads side by side; the extra token of the pruned ones.

        Deviation: EffiVLM's VisionZip averages the pre-softmax logits (it stores ``attn``
        before ``attn.softmax``), which ranks patches by their key's dot product with the
        mean query; here the encoder's softmax attention is averaged, as EffiVLM-Bench
        itself does on LLaVA-OneVision and Qwen2-VL.  Kept tokens stay in their own slots
        (EffiVLM concatenates dominant then contextual tokens)."""
        cfg = self.model.config
        layer = getattr(cfg, "vision_feature_layer", None)
        if not isinstance(layer, int) or getattr(cfg, "vision_feature_select_strategy", None) != "default":
            raise ConfigError(f"{method}: needs one vision feature layer and vision_feature_select_strategy='default' (the CLS token dropped before the pixel shuffle)")
        side = round(1 / cfg.downsample_ratio)
        if abs(side * cfg.downsample_ratio - 1) > 1e-6:
            raise ConfigError(f"{method}: downsample_ratio={cfg.downsample_ratio} does not pack a whole square of patches into one token")
        embeddings = find_module(self.vision_tower, ("embeddings",))
        if getattr(embeddings, "cls_token", None) is None:
            raise ConfigError(f"{method}: {type(self.vision_tower).__name__} has no CLS token")
        layers = self.vision_layers
        idx = len(layers) + layer if layer < 0 else layer - 1
        if not 0 <= idx < len(layers):
            raise ConfigError(f"{method}: vision_feature_layer={layer} does not name an encoder layer")
        score = "cls" if method == "prumerge_plus" else "received"
        return VisionScoring("shuffle", layers[max(idx - 1, 0)].attention, self.projector, group=side * side, score=score)
