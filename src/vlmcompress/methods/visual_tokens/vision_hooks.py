"""Shared plumbing of the vision-side pruners (VisionZip, PruMerge+): score the tokens
from the vision tower's own attention, rewrite the visual features (merging), and tell
the decoder which visual tokens survive (dropped before decoder layer 0, so the
language model runs on the shorter sequence; kept tokens keep their original positions,
1-D RoPE or Qwen2-VL's 3-D M-RoPE alike, because the layout gathers the model's own
rotary ``cos``/``sin`` at the kept tokens' original slots -- the references instead
renumber the kept tokens contiguously).  Every merged token stays in its own slot, so
the language model sees exactly the kept placeholders.

Two tower shapes:

* **CLS towers** (CLIP under LLaVA; a tower without a CLS token, e.g. SigLIP, is refused
  by the adapter): a patch's score is the attention the CLS query pays it in the
  adapter's scoring layer (VisionZip: the layer whose output the projector reads;
  PruMerge+: the layer after it, which reads those features), computed the method's way
  (:attr:`VisionTokenMethod.cls_score`), and its key for similarity is that layer's
  ``k_proj`` output, averaged over heads or undivided (:attr:`VisionTokenMethod.key_heads`).
  One patch = one LLM token; merging rewrites the projector's input, as the references
  merge the vision features before ``mm_projector``.  Under
  ``vision_feature_select_strategy="full"`` the CLS token itself reaches the projector
  (row 0), and each method is told so.
* **Merger towers** (Qwen2-VL): there is no CLS token, and the PatchMerger packs every
  ``m x m`` window of patches (``m*m`` consecutive rows) into ONE LLM token.  As in
  EffiVLM-Bench, the score is read in the second-to-last vision block: the attention a
  patch *receives* from the patches of its own image (images attend only within
  themselves, ``cu_seqlens``), averaged over heads and queries, then averaged over the
  merger window; a window's key is the mean of its patches' post-rotary keys (heads
  averaged or side by side, as for CLS towers); and selection and merging act on the
  merger's OUTPUT (one row per LLM token).  EffiVLM-Bench averages over every query of
  the whole forward (all images at once) and selects over all images jointly; here each
  image is scored and budgeted on its own (identical for one image per forward, and a
  row's result does not depend on its batch).  Budgets count LLM tokens, per image.

Which shape a model has, and where its scored attention sits, is the adapter's answer
(:meth:`~vlmcompress.models.base.ModelAdapter.vision_scoring`); a family it cannot serve
is refused there with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..layout import LayoutMethod
from .select import cls_query_attention, group_tokens, received_attention


@dataclass
class VisionTokenMethod(LayoutMethod):
    hook: ClassVar[str] = "vision"
    family: ClassVar[str | None] = "vision_tokens"

    # how a CLS tower's CLS attention is computed: "heads" = the encoder's per-head
    # softmax summed over heads (VisionZip) | "full_width" = one softmax over the
    # undivided q/k projections, scaled by the full width (PruMerge)
    cls_score: ClassVar[str] = "heads"
    # keys for similarity: "mean" = averaged over heads (VisionZip) | "concat" = heads
    # side by side, the undivided projection (PruMerge)
    key_heads: ClassVar[str] = "mean"

    ratio: float = 0.4  # share of the visual tokens kept, in (0, 1]

    def __post_init__(self) -> None:
        super().__post_init__()
        self._captured: dict[str, torch.Tensor] = {}
        self._pending_keep: torch.Tensor | None = None
        self._handles: list = []
        self._group = 1
        self._rotary = None

    def validate(self) -> None:
        self.check_range("ratio", 0, 1, low_open=True)

    # ---------------------------------------------------------------- per method
    def reduce_image(self, features: torch.Tensor, scores: torch.Tensor, keys: torch.Tensor, *, cls_tower: bool = False, cls_row: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """One image: ``features`` ``[P, C]`` (one row per LLM token: the projector's input
        on CLS towers, the merger's output on merger towers), ``scores`` ``[P]`` (the
        token's attention score), ``keys`` ``[P, Dm]`` -> (new features ``[P, C]``, keep
        mask ``[P]``).  ``cls_tower``: the features come from a CLS tower; ``cls_row``:
        row 0 is the CLS token itself (``vision_feature_select_strategy="full"``)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- hooks
    def check_model(self, ctx) -> None:
        super().check_model(ctx)
        ctx.adapter.vision_scoring(self.name)  # refuses a tower this method cannot score

    def setup(self, ctx) -> None:
        self._captured = {}
        self._pending_keep = None
        site = ctx.adapter.vision_scoring(self.name)
        if site.kind == "cls":
            self._handles = [
                site.attention.register_forward_pre_hook(self._capture_cls, with_kwargs=True),
                site.projector.register_forward_pre_hook(self._rewrite_cls, with_kwargs=True),
            ]
        else:
            self._group, self._rotary = site.group, site.rotary
            self._handles = [
                ctx.adapter.vision_tower.register_forward_pre_hook(self._capture_grid, with_kwargs=True),
                site.attention.register_forward_pre_hook(self._capture_received, with_kwargs=True),
                site.projector.register_forward_hook(self._rewrite_merged),
            ]

    def teardown(self, ctx) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _emit(self, new: list[torch.Tensor], keeps: list[torch.Tensor]) -> torch.Tensor:
        """Record the batch's keep mask over all its image tokens (images in batch order,
        which is the order the model scatters them into the placeholders) and return the
        rewritten features (the projector's input, or the merger's output)."""
        # transformers 5.x generate encodes images BEFORE the prefill forward (its
        # ``mm_encoder_outputs``), so the keep mask waits here for decoder layer 0
        self._pending_keep = torch.cat(keeps)
        self._captured = {}
        return torch.cat(new)

    # -------------------------------------------------- CLS towers (LLaVA family)
    def _capture_cls(self, attn, args, kwargs):
        h = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        n, T, _ = h.shape
        k = attn.k_proj(h)  # [n, T, E]: heads side by side
        scores = cls_query_attention(attn.q_proj(h[:, 0]), k, attn.num_heads, attn.scale, self.cls_score == "full_width")
        keys = k if self.key_heads == "concat" else k.view(n, T, attn.num_heads, -1).mean(2)
        self._captured = {"cls": scores, "keys": keys}
        return None

    def _rewrite_cls(self, projector, args, kwargs):
        feats = kwargs["image_features"] if "image_features" in kwargs else args[0]
        cap = self._captured
        if not cap or feats.dim() != 3:
            return None
        n, P, _ = feats.shape
        off = cap["cls"].shape[1] - P  # 1: the projector never sees the CLS token ("default"); 0: it is row 0 ("full")
        if off not in (0, 1):
            return None
        new, keeps = [], []
        for i in range(n):
            f, keep = self.reduce_image(feats[i], cap["cls"][i, off:], cap["keys"][i, off:], cls_tower=True, cls_row=off == 0)
            new.append(f)
            keeps.append(keep)
        return _replace_first(args, kwargs, "image_features", self._emit([f[None] for f in new], keeps))

    # -------------------------------------------------- merger towers (Qwen2-VL)
    def _capture_grid(self, tower, args, kwargs):
        grid = kwargs["grid_thw"] if "grid_thw" in kwargs else (args[1] if len(args) > 1 else None)
        self._captured = {} if grid is None else {"grid": grid.detach()}
        return None

    def _capture_received(self, attn, args, kwargs):
        if "grid" not in self._captured:
            return None
        h = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        cu = kwargs["cu_seqlens"] if "cu_seqlens" in kwargs else args[1]
        cos, sin = kwargs["position_embeddings"]
        N = h.shape[0]
        q, k, _ = attn.qkv(h).reshape(N, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        q, k = self._rotary(q, k, cos, sin)  # [N, H, D]
        received = torch.empty(N, dtype=torch.float32, device=h.device)
        bounds = cu.tolist()
        qh, kh = q.transpose(0, 1), k.transpose(0, 1)  # [H, N, D]
        for s, e in zip(bounds[:-1], bounds[1:]):  # attention never crosses an image (or a video frame)
            received[s:e] = received_attention(qh[:, s:e], kh[:, s:e], attn.scaling)
        keys = k.reshape(N, -1) if self.key_heads == "concat" else k.mean(1)
        self._captured.update(received=received, keys=keys)
        return None

    def _rewrite_merged(self, merger, args, y):
        cap = self._captured
        g = self._group
        if "received" not in cap or not torch.is_tensor(y) or y.dim() != 2 or y.shape[0] * g != cap["received"].numel():
            return None
        new, keeps, start = [], [], 0
        for n in cap["grid"].prod(-1).tolist():  # one image at a time
            scores, keys = group_tokens(cap["received"][start : start + n], cap["keys"][start : start + n], g)
            f, keep = self.reduce_image(y[start // g : (start + n) // g], scores, keys)
            new.append(f)
            keeps.append(keep)
            start += n
        return self._emit(new, keeps)

    def keep_before(self, layer, layout):
        visual = self._pending_keep
        if layer != 0 or visual is None:
            return None
        self._pending_keep = None
        image = layout.seq_image
        if int(image.sum()) != visual.numel():
            raise RuntimeError(f"{self.name}: {visual.numel()} visual tokens from the vision tower, {int(image.sum())} placeholders in the prompt")
        keep = layout.seq_valid & ~image
        keep[image] = visual.to(keep.device)
        return keep


def _replace_first(args, kwargs, name: str, value: torch.Tensor):
    """Forward pre-hook result that swaps the module's first input for ``value``."""
    if name in kwargs:
        kwargs[name] = value
        return args, kwargs
    return (value,) + tuple(args[1:]), kwargs
