"""LLaVA-1.5, LLaVA-NeXT and LLaVA-OneVision as transformers implements them."""

from ..errors import ConfigError
from .base import ADAPTERS, ModelAdapter, VisionScoring


@ADAPTERS.register
class LlavaAdapter(ModelAdapter):
    name = "llava"
    model_types = ("llava", "llava_next", "llava_onevision")

    def vision_scoring(self, method: str) -> VisionScoring:
        """The CLS attention at ``vision_feature_layer`` (the layer whose output the
        projector reads; ``hidden_states[i]`` is layer ``i-1``'s output)."""
        cfg = self.model.config
        layer = getattr(cfg, "vision_feature_layer", None)
        strategy = getattr(cfg, "vision_feature_select_strategy", None)
        if not isinstance(layer, int) or strategy not in ("default", "full"):
            raise ConfigError(f"{method}: needs a vision tower with a CLS token and one feature layer; {type(self.model).__name__} has neither")
        layers = self.vision_layers
        idx = len(layers) + layer if layer < 0 else layer - 1
        if not 0 <= idx < len(layers):
            raise ConfigError(f"{method}: vision_feature_layer={layer} does not name an encoder layer")
        return VisionScoring("cls", layers[idx].self_attn, self.projector)
