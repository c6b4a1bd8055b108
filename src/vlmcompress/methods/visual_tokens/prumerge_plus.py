"""PruMerge+ (Shang et al., 2024, "LLaVA-PruMerge: Adaptive Token Reduction for
Efficient Large Multimodal Models"; 42Shawn/LLaVA-PruMerge, and EffiVLM-Bench's
budgeted version): the attention outliers (above Q3 + 1.5 IQR) are kept as an adaptive
set, completed with spatially uniform samples up to the budget; each kept token then
absorbs its most key-similar tokens, weighted by their attention.

What is followed (selection and merge in ``select``, scoring sites in ``vision_hooks``
and the adapters):

* **Score on LLaVA (CLIP)**: LLaVA-PruMerge's, in the encoder layer AFTER the feature
  layer (the one reading the features; the reference hooks ``layers[23]`` of CLIP-L
  under ``select_layer=-2``): ONE softmax of the CLS row of ``q_proj(h) @ k_proj(h)^T *
  E ** -0.5`` over the undivided width ``E`` (not the encoder's per-head softmax), the CLS
  column dropped after the softmax.  It sums to 1 over the image, so the merge weights
  are the reference's, not about ``heads`` times larger.  Keys for similarity: that
  layer's undivided ``k_proj`` output.
* **Score on Qwen2-VL**: EffiVLM-Bench's port: the second-to-last vision block's per-head
  attention, averaged over heads and queries and over the 2x2 merger window (the mean,
  so the merge weights are the reference's); keys: post-rotary keys with heads side by
  side, averaged over the window; selection and merging on the merger's output.
* **Score on LLaVA-OneVision** (SigLIP, no CLS): EffiVLM-Bench's: the same full-width
  softmax in the feature layer (there is none after it), averaged over every query (the
  attention a patch receives); undivided keys; per crop, on the projector's input.
* **Score on InternVL**: EffiVLM-Bench's InternVL2.5 code: the CLS query's full-width
  attention in the layer before the feature layer, CLS column dropped, averaged over the
  2x2 square one pixel-shuffled token holds; undivided keys likewise; per tile, on the
  projector's output.  Qwen2.5-VL (no reference): as Qwen2-VL, in its last
  full-attention block before the final one, tokens in raster order.
* **Selection under a budget** (EffiVLM-Bench): the adaptive set is the IQR outliers (at
  least the best token); the budget's other slots go to the grid positions ``0, s, 2s,
  ...`` with ``s = P // budget`` that the adaptive set does not hold, in order; with
  more outliers than budget, the best ``budget`` tokens.
* **Merge**: ``x_i + sum_j a_j x_j`` over the ``neighbours`` (32) most similar OTHER
  tokens, kept or pruned, with raw attention weights (``merge_from=all``).
  ``merge_from=pruned`` draws neighbours from the pruned tokens only (then ``ratio=1``
  leaves the model unchanged, which the reference does not: every token still absorbs
  32 neighbours).
* **Extra token** (CLS towers, as in LLaVA-PruMerge and EffiVLM-Bench's LLaVA code, and
  EffiVLM-Bench's OneVision and InternVL code): the attention-weighted sum of the pruned
  tokens.

Documented deviations:

* **Where the extra token goes.**  The reference appends it after the kept tokens, so
  the language model sees ``budget + 1`` visual tokens.  Here the language model sees
  exactly the kept placeholders and the budget is met exactly, so the extra token takes
  one of the budget's slots: the reference rule runs at ``budget - 1`` and the extra
  token is written into the LAST pruned placeholder of the image (the slot nearest to
  "after the kept tokens").  It is used when the budget is at least 2 and something is
  pruned.  EffiVLM-Bench's Qwen2-VL port has no extra token, so merger towers get none.
* **The CLS token under ``vision_feature_select_strategy="full"``** reaches the
  projector as row 0; the reference never hands CLS to the language model, so it is
  never kept, merged or scored as a patch (the budget still counts every placeholder).
* **Per image, in its own slot.**  Each image (crop) gets its own IQR and budget; the
  Qwen2-VL port computes one IQR and budget over all images of a forward, and writes
  the merged tokens in selection order into position-sorted slots, which puts them at
  the wrong positions; here every merged token stays in its own slot.
* **No adaptive budget.**  The original PruMerge+ has no budget (outliers plus a grid of
  step ``int(int(1 / outlier_share) / 3)``); EffiVLM-Bench's budgeted rule is followed, as
  the benchmark's budgets require.
"""

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..base import METHODS
from .select import prumerge_extra_token, prumerge_merge, prumerge_plus_select, visual_budget
from .vision_hooks import VisionTokenMethod


@METHODS.register
@dataclass
class PruMergePlus(VisionTokenMethod):
    name: ClassVar[str] = "prumerge_plus"
    cls_score: ClassVar[str] = "full_width"
    key_heads: ClassVar[str] = "concat"

    ratio: float = 0.25  # share of the visual tokens kept, in (0, 1]
    neighbours: int = 32  # tokens each kept token absorbs (the paper's k = 32)
    merge_from: str = "all"  # all: every other token (the reference) | pruned: pruned tokens only

    def validate(self) -> None:
        super().validate()
        self.check_range("neighbours", 0, None)
        self.check_choice("merge_from", ("all", "pruned"))

    def reduce_image(self, features, scores, keys, *, cls_tower=False, cls_row=False):
        P = features.shape[0]
        off = 1 if cls_row else 0  # the CLS row is not a patch: never kept, merged or weighed
        feats, att, ks = features[off:], scores[off:], keys[off:]
        N = P - off
        n_keep = min(visual_budget(P, self.ratio), N)
        extra = cls_tower and 2 <= n_keep < N
        kept = prumerge_plus_select(att, n_keep - int(extra))
        out = features.clone()
        keep = torch.zeros(P, dtype=torch.bool, device=features.device)
        out[off + kept] = prumerge_merge(feats, ks, att, kept, self.neighbours, self.merge_from)
        keep[off + kept] = True
        if extra:
            pruned = torch.ones(N, dtype=torch.bool, device=features.device)
            pruned[kept] = False
            slot = off + int(pruned.nonzero().flatten()[-1])
            out[slot] = prumerge_extra_token(feats, att, kept)
            keep[slot] = True
        return out, keep
