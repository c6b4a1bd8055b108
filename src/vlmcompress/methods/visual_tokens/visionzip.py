"""VisionZip (Yang et al., 2024, "VisionZip: Longer is Better but Not Necessary in
Vision Language Models"; dvlab-research/VisionZip, and EffiVLM-Bench's Qwen2-VL port):
in the vision encoder, keep the *dominant* tokens (most CLS attention) and condense the
rest into a few *contextual* tokens: evenly strided targets, each becoming ``target +
mean(tokens most similar to it)`` (cosine of the keys averaged over heads).

What is followed, per tower (see ``vision_hooks``):

* **LLaVA (CLIP)**: the CLS attention at the feature layer (the encoder's per-head
  softmax, CLS row, summed over heads), the same layer's head-averaged ``k_proj`` keys,
  merging on the features the projector reads.
* **Qwen2-VL**: EffiVLM-Bench's port: scores and keys from the second-to-last vision
  block (attention received, averaged over heads, queries and the 2x2 merger window;
  keys averaged over heads and the window), selection and merging on the merger's output.
  Qwen2.5-VL (no reference): the same, in its last full-attention block before the final
  one, on the merged tokens in raster order (the tower's window order undone).
* **LLaVA-OneVision (SigLIP, no CLS)**: EffiVLM-Bench's: the attention a patch receives in
  the layer before the feature layer, averaged over heads and every query; keys
  averaged over heads; per crop, merging on the projector's input (EffiVLM-Bench merges
  that layer's own output instead of the feature layer's).
* **InternVL**: EffiVLM-Bench's InternVL2.5 code: the attention a patch receives from
  the other patches in the layer before the feature layer (CLS row and column dropped),
  averaged over heads, queries and the 2x2 square one pixel-shuffled token holds; keys
  likewise; per tile, on the projector's output (EffiVLM averages the pre-softmax logits;
  here the softmax attention).

Documented deviations:

* **The CLS token under ``vision_feature_select_strategy="default"``.**  The reference
  hands the projector ``[CLS, dominant patches, contextual tokens]``: CLS is always one
  of the dominant tokens (``visionzip(dominant=54)`` keeps CLS + 53 patches).
  transformers' LLaVA drops CLS before the projector under "default" (LLaVA-1.5's own
  ``select_feature="patch"``, what its projector was trained on) and has no placeholder
  for it, so the CLS token cannot reach the language model.  Its dominant slot goes to
  the next patch by CLS attention: the language model sees as many visual tokens as in
  the reference, all patches.  Under "full", where the projector reads CLS as row 0, the
  reference rule holds exactly: CLS is kept as a dominant token (counted in the
  dominant share) and never merged.
* **Budget split.**  ``ratio`` is the share of visual tokens kept and is met exactly;
  ``round(budget * dominant_share)`` are dominant, the rest contextual.  The reference
  takes the two counts as arguments (54/10, 108/20, 162/30 at the paper's budgets, which
  this split reproduces); EffiVLM-Bench computes ``int(N r 54/64)`` and ``int(N r 10/64)``
  separately (each at least 1), which can miss its own budget by a token.
* **Per image.**  Every image (LLaVA-NeXT crop, Qwen2-VL image) gets its own budget; the
  Qwen2-VL port ranks all images of a forward together.
* **Positions.**  Kept tokens keep their original slots and positions; the references
  concatenate dominant then contextual tokens at fresh consecutive positions.
"""

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
    cls_score: ClassVar[str] = "heads"
    key_heads: ClassVar[str] = "mean"

    ratio: float = 0.4  # share of the visual tokens kept (dominant + contextual), in (0, 1]
    dominant_share: float = 54 / 64  # the paper's 54 dominant : 10 contextual split

    def validate(self) -> None:
        super().validate()
        self.check_range("dominant_share", 0, 1, low_open=True)

    def reduce_image(self, features, scores, keys, *, cls_tower=False, cls_row=False):
        P = features.shape[0]
        dominant, targets, merged, assign = visionzip_select(scores, keys, visual_budget(P, self.ratio), self.dominant_share, cls=cls_row)
        keep = torch.zeros(P, dtype=torch.bool, device=features.device)
        keep[dominant] = True
        keep[targets] = True
        return merge_into_targets(features, targets, merged, assign), keep
