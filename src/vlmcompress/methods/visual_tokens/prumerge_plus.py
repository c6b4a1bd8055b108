"""PruMerge+ (Shang et al., 2024, "LLaVA-PruMerge: Adaptive Token Reduction for
Efficient Large Multimodal Models"): the CLS-attention outliers (above Q3 + 1.5 IQR)
are kept as an adaptive set, completed with spatially uniform samples up to the budget;
each kept token then absorbs its most key-similar tokens, weighted by their CLS
attention.

On Qwen2-VL (no CLS token) "CLS attention" becomes the attention a 2x2 merger window
receives in the last vision block: the mean over heads and over every query patch of
its image, summed over the window's four patches (so an image's windows share 1).
The IQR outliers, the uniform fill and the merge weights all use that score, and a
window is selected or merged as a whole, since the merger turns it into one LLM token
(see ``vision_hooks``)."""

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..base import METHODS
from .select import prumerge_merge, prumerge_plus_select, visual_budget
from .vision_hooks import VisionTokenMethod


@METHODS.register
@dataclass
class PruMergePlus(VisionTokenMethod):
    name: ClassVar[str] = "prumerge_plus"

    ratio: float = 0.25  # share of the visual tokens kept, in (0, 1]
    neighbours: int = 32  # tokens each kept token absorbs (the paper's k = 32)

    def validate(self) -> None:
        super().validate()
        self.check_range("neighbours", 0, None)

    def reduce_image(self, features, cls_attention, keys):
        P = features.shape[0]
        kept = prumerge_plus_select(cls_attention, visual_budget(P, self.ratio))
        out = features.clone()
        out[kept] = prumerge_merge(features, keys, cls_attention, kept, self.neighbours)
        keep = torch.zeros(P, dtype=torch.bool, device=features.device)
        keep[kept] = True
        return out, keep
