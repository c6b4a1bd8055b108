"""VisionZip (Yang et al., 2024, "VisionZip: Longer is Better but Not Necessary in
Vision Language Models"): in the vision encoder, before the projector, keep the
*dominant* tokens (most CLS attention at the feature layer) and condense the rest into
a few *contextual* tokens: evenly strided targets, each absorbing the mean of the
remaining tokens most similar to it (cosine of the feature layer's keys).

On Qwen2-VL (no CLS token; the PatchMerger packs each 2x2 window of patches into one LLM
token) the unit is the merger window: its score is the mean attention its four patches
receive from every patch of the image in the last vision block (averaged over heads
and queries, summed over the window) -- with no summary query to ask, the average of
all queries is the query-independent stand-in for the CLS row -- its key the
concatenation of its patches' keys, and a contextual token averages whole windows
before the merger.  Budgets count LLM tokens, per image (see ``vision_hooks``)."""

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..base import METHODS
from .select import merge_into_targets, visionzip_select, visual_budget
from .vision_hooks import VisionTokenMethod


@METHODS.register
@dataclass
class VisionZip(VisionTokenMethod):
    name: ClassVar[str] = "visionzip"

    ratio: float = 0.4  # share of the visual tokens kept (dominant + contextual), in (0, 1]
    dominant_share: float = 54 / 64  # the paper's 54 dominant : 10 contextual split

    def validate(self) -> None:
        super().validate()
        self.check_range("dominant_share", 0, 1, low_open=True)

    def reduce_image(self, features, cls_attention, keys):
        P = features.shape[0]
        dominant, targets, merged, assign = visionzip_select(cls_attention, keys, visual_budget(P, self.ratio), self.dominant_share)
        keep = torch.zeros(P, dtype=torch.bool, device=features.device)
        keep[dominant] = True
        keep[targets] = True
        return merge_into_targets(features, targets, merged, assign), keep
