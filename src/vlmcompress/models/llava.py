"""LLaVA-1.5, LLaVA-NeXT and LLaVA-OneVision as transformers implements them."""

from torch import nn

from ..errors import ConfigError
from .base import ADAPTERS, ModelAdapter, VisionScoring, find_module


@ADAPTERS.register
class LlavaAdapter(ModelAdapter):
    name = "llava"
    model_types = ("llava", "llava_next", "llava_onevision")

    @property
    def anyres_packing(self) -> nn.Module | None:
        """The inner model whose ``pack_image_features`` lays out an image's anyres crops
        (LLaVA-NeXT, OneVision: base crop, unpadded grid, newline tokens); ``None`` on
        LLaVA-1.5, whose one crop per image reaches its placeholders as it is."""
        inner = getattr(self.model, "model", None)
        return inner if inner is not None and hasattr(type(inner), "pack_image_features") else None

    def vision_scoring(self, method: str) -> VisionScoring:
        """Where a vision-side pruner scores the patches, relative to
        ``vision_feature_layer`` (the layer whose output the projector reads;
        ``hidden_states[i]`` is layer ``i-1``'s output).

        CLS towers (CLIP: LLaVA-1.5, LLaVA-NeXT): the CLS attention of one encoder layer.
        VisionZip reads the feature layer itself (its ``attentions[-2]`` and ``layers[-2]``
        keys under LLaVA-1.5's ``vision_feature_layer=-2``); PruMerge+ reads the layer
        AFTER it, whose input is the feature (LLaVA-PruMerge hooks ``layers[23]`` of the
        24-layer CLIP-L), or the feature layer itself when it is the last one.

        LLaVA-OneVision's SigLIP has no CLS token; EffiVLM-Bench scores it by the attention
        a patch receives, averaged over heads and every query (``attn_weights.mean(1).mean(1)``)
        for VisionZip in ``layers[-2]`` (its ``layer_idx == 24`` of the 26 layers kept, the
        layer before the feature layer ``-1``), and with PruMerge+'s one full-width softmax,
        averaged over the queries, in ``layers[25]`` (the feature layer, there being none
        after it).  The same layers are read here, relative to the feature layer.  A tower
        without CLS under LLaVA-1.5 / LLaVA-NeXT has no reference rule and is refused.

        Anyres images (LLaVA-NeXT, OneVision) are scored and budgeted per crop, as in
        EffiVLM-Bench; the crops' keep decisions are then laid out by the model's own
        packing (``packing``), so tokens that unpadding crops away are gone and newline
        tokens are always kept."""
        cfg = self.model.config
        layer = getattr(cfg, "vision_feature_layer", None)
        strategy = getattr(cfg, "vision_feature_select_strategy", None)
        if not isinstance(layer, int) or strategy not in ("default", "full"):
            raise ConfigError(f"{method}: needs a vision tower with one feature layer and select strategy default or full; {type(self.model).__name__} has neither")
        embeddings = find_module(self.vision_tower, ("embeddings",))
        has_cls = getattr(embeddings, "class_embedding", None) is not None
        layers = self.vision_layers
        idx = len(layers) + layer if layer < 0 else layer - 1
        if not 0 <= idx < len(layers):
            raise ConfigError(f"{method}: vision_feature_layer={layer} does not name an encoder layer")
        if has_cls:
            if method == "prumerge_plus" and idx + 1 < len(layers):
                idx += 1
            return VisionScoring("cls", layers[idx].self_attn, self.projector, packing=self.anyres_packing)
        if cfg.model_type != "llava_onevision":
            raise ConfigError(
                f"{method}: scores patches by their CLS attention, and {type(self.vision_tower).__name__} has no CLS token (the CLS-free rule follows EffiVLM-Bench on LLaVA-OneVision only)"
            )
        if strategy != "full":
            raise ConfigError(f"{method}: a tower without CLS token needs vision_feature_select_strategy='full' (every patch reaches the projector); this model has {strategy!r}")
        if method == "prumerge_plus":
            idx = min(idx + 1, len(layers) - 1)
        else:
            idx = max(idx - 1, 0)
        return VisionScoring("received", layers[idx].self_attn, self.projector, packing=self.anyres_packing)
