"""LLaVA-1.5, LLaVA-NeXT and LLaVA-OneVision as transformers implements them."""

from ..errors import ConfigError
from .base import ADAPTERS, ModelAdapter, VisionScoring, find_module


@ADAPTERS.register
class LlavaAdapter(ModelAdapter):
    name = "llava"
    model_types = ("llava", "llava_next", "llava_onevision")

    def vision_scoring(self, method: str) -> VisionScoring:
        """The CLS attention of one encoder layer, relative to ``vision_feature_layer`` (the
        layer whose output the projector reads; ``hidden_states[i]`` is layer ``i-1``'s
        output).  VisionZip reads the feature layer itself (its ``attentions[-2]`` and
        ``layers[-2]`` keys under LLaVA-1.5's ``vision_feature_layer=-2``); PruMerge+ reads
        the layer AFTER it, whose input is the feature (LLaVA-PruMerge hooks
        ``layers[23]`` of the 24-layer CLIP-L), or the feature layer itself when it is the
        last one (as EffiVLM-Bench does on LLaVA-OneVision).  The tower needs a CLS token:
        SigLIP towers have none and are refused."""
        cfg = self.model.config
        layer = getattr(cfg, "vision_feature_layer", None)
        strategy = getattr(cfg, "vision_feature_select_strategy", None)
        if not isinstance(layer, int) or strategy not in ("default", "full"):
            raise ConfigError(f"{method}: needs a vision tower with a CLS token and one feature layer; {type(self.model).__name__} has neither")
        embeddings = find_module(self.vision_tower, ("embeddings",))
        if getattr(embeddings, "class_embedding", None) is None:
            raise ConfigError(f"{method}: scores patches by their CLS attention, and {type(self.vision_tower).__name__} has no CLS token")
        layers = self.vision_layers
        idx = len(layers) + layer if layer < 0 else layer - 1
        if not 0 <= idx < len(layers):
            raise ConfigError(f"{method}: vision_feature_layer={layer} does not name an encoder layer")
        if method == "prumerge_plus" and idx + 1 < len(layers):
            idx += 1
        return VisionScoring("cls", layers[idx].self_attn, self.projector)
