"""Shared plumbing of the vision-side pruners (VisionZip, PruMerge+): score the tokens
from the vision tower's own attention, rewrite the visual features (merging), and tell
the decoder which visual tokens survive (dropped before decoder layer 0, so the
language model runs on the shorter sequence; kept tokens keep their original positions,
1-D RoPE or Qwen2-VL's 3-D M-RoPE alike, because the layout gathers the model's own
rotary ``cos``/``sin`` at the kept tokens' original slots -- the references instead
renumber the kept tokens contiguously).  Every merged token stays in its own slot, so
the language model sees exactly the kept placeholders.

Tower shapes (the adapter's :class:`~vlmcompress.models.base.VisionScoring` kind):

* **CLS towers** (CLIP under LLaVA / LLaVA-NeXT): a patch's score is the attention the
  CLS query pays it in the adapter's scoring layer (VisionZip: the layer whose output the
  projector reads; PruMerge+: the layer after it, which reads those features), computed
  the method's way (:attr:`VisionTokenMethod.cls_score`), and its key for similarity is
  that layer's ``k_proj`` output, averaged over heads or undivided
  (:attr:`VisionTokenMethod.key_heads`).  One patch = one LLM token; merging rewrites
  the projector's input, as the references merge the vision features before
  ``mm_projector``.  Under ``vision_feature_select_strategy="full"`` the CLS token itself
  reaches the projector (row 0), and each method is told so.
* **Received-attention towers** (SigLIP under LLaVA-OneVision, no CLS token): as CLS
  towers, but a patch's score is the attention it receives from every query of its
  crop, averaged over queries (EffiVLM-Bench's rule on OneVision): VisionZip averages the
  encoder's per-head softmax over heads, PruMerge+ takes one full-width softmax.
* **Merger towers** (Qwen2-VL, Qwen2.5-VL): there is no CLS token, and the PatchMerger
  packs every ``m x m`` window of patches (``m*m`` consecutive rows) into ONE LLM token.
  As in EffiVLM-Bench, the score is read in a full-attention vision block (Qwen2-VL: the
  second-to-last): the attention a patch *receives* from the patches of its own image
  (images attend only within themselves, ``cu_seqlens``), averaged over heads and
  queries, then averaged over the merger window; a window's key is the mean of its
  patches' post-rotary keys (heads averaged or side by side, as for CLS towers); and
  selection and merging act on the merger's OUTPUT (one row per LLM token).
  EffiVLM-Bench averages over every query of the whole forward (all images at once) and
  selects over all images jointly; here each image is scored and budgeted on its own
  (identical for one image per forward, and a row's result does not depend on its
  batch).  Qwen2.5-VL's tower permutes the merged tokens into attention windows before
  its blocks and restores raster order after the merger: the pruners see each image in
  raster order (so strided picks and grids are spatial) and hand the merger's output
  back in window order.
* **Pixel-shuffle towers** (InternVL): a CLS token (dropped before the projector), and a
  pixel shuffle that packs each ``side x side`` square of patches into one token.  As in
  EffiVLM-Bench, a patch's score (the CLS query's attention, or the attention it receives
  from the other patches, as the adapter says per method) and key are averaged over its
  square, and selection and merging act on the projector's output, tile by tile.

Anyres images (LLaVA-NeXT, OneVision): every crop is scored and budgeted on its own, as
in EffiVLM-Bench; the model then lays the crops out (base crop, the grid unpadded to the
image's aspect ratio, a newline token after each row, and under OneVision's
``anyres_max_N`` a bilinear downscale of a large grid).  The crops' keep decisions go
through the model's own ``pack_image_features``: the pruned features are zeroed before
packing and a packed token is kept when any kept patch contributes to it, the rule
EffiVLM-Bench applies to its zero-filled "fake image" (``(feature != 0).any``); newline
tokens are always kept; tokens that unpadding crops away are gone, kept or not (so an
anyres image can keep fewer tokens than its crops' budgets).

Which shape a model has, and where its scored attention sits, is the adapter's answer
(:meth:`~vlmcompress.models.base.ModelAdapter.vision_scoring`); a family it cannot serve
is refused there with the reason.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..layout import LayoutMethod
from .select import cls_query_attention, group_tokens, received_attention, square_tokens


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
        self._site = None
        self._crop_keep: torch.Tensor | None = None  # anyres: per-crop keep masks awaiting the packing
        self._unwrap = None

    def validate(self) -> None:
        self.check_range("ratio", 0, 1, low_open=True)

    # ---------------------------------------------------------------- per method
    def reduce_image(self, features: torch.Tensor, scores: torch.Tensor, keys: torch.Tensor, *, cls_tower: bool = False, cls_row: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """One image (crop, tile): ``features`` ``[P, C]`` (one row per LLM token: the
        projector's input on CLS and received-attention towers, its output on
        pixel-shuffle towers, the merger's output on merger towers), ``scores`` ``[P]``
        (the token's attention score), ``keys`` ``[P, Dm]`` -> (new features ``[P, C]``,
        keep mask ``[P]``).  ``cls_tower``: a LLaVA-style tower, on which the references
        append PruMerge+'s extra token (CLIP, and in EffiVLM-Bench OneVision's SigLIP and
        InternVL's tiles; not Qwen's merger towers); ``cls_row``: row 0 is the CLS token
        itself (``vision_feature_select_strategy="full"`` on a CLS tower)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- hooks
    def check_model(self, ctx) -> None:
        super().check_model(ctx)
        ctx.adapter.vision_scoring(self.name)  # refuses a tower this method cannot score

    def setup(self, ctx) -> None:
        self._captured = {}
        self._pending_keep = None
        self._crop_keep = None
        site = self._site = ctx.adapter.vision_scoring(self.name)
        if site.kind == "merger":
            self._group, self._rotary = site.group, site.rotary
            self._handles = [
                ctx.adapter.vision_tower.register_forward_pre_hook(self._capture_grid, with_kwargs=True),
                site.attention.register_forward_pre_hook(self._capture_received, with_kwargs=True),
                site.projector.register_forward_hook(self._rewrite_merged),
            ]
            return
        self._handles = [site.attention.register_forward_pre_hook(self._capture_patches, with_kwargs=True)]
        if site.kind == "shuffle":
            self._handles.append(site.projector.register_forward_hook(self._rewrite_shuffled))
        else:
            self._handles.append(site.projector.register_forward_pre_hook(self._rewrite_patches, with_kwargs=True))
        if site.packing is not None:
            self._wrap_packing(site.packing)

    def teardown(self, ctx) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        if self._unwrap is not None:
            self._unwrap()
            self._unwrap = None

    def _emit(self, new: list[torch.Tensor], keeps: list[torch.Tensor]) -> torch.Tensor:
        """Record the batch's keep mask over all its image tokens (images in batch order,
        which is the order the model scatters them into the placeholders) and return the
        rewritten features (the projector's input or output, or the merger's output)."""
        # transformers 5.x generate encodes images BEFORE the prefill forward (its
        # ``mm_encoder_outputs``), so the keep mask waits here for decoder layer 0
        self._pending_keep = torch.cat([k.flatten() for k in keeps])
        self._captured = {}
        return torch.cat(new)

    # -------------------------------------------------- one patch per token, or squares of them
    def _capture_patches(self, attn, args, kwargs):
        """Scores and keys of every patch of every crop / tile, ``[n, T]`` / ``[n, T, Dk]``
        (``T``: the tower's sequence; a CLS tower's scores are the CLS row's)."""
        h = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        if h.dim() != 3:
            return None
        site = self._site
        n, T, E = h.shape
        k = _normed(attn, "k", h)  # [n, T, E]: heads side by side
        full = self.cls_score == "full_width"
        if site.kind == "cls" or (site.kind == "shuffle" and site.score == "cls"):
            scores = cls_query_attention(_normed(attn, "q", h[:, 0]), k, attn.num_heads, attn.scale, full)
        else:
            q = _normed(attn, "q", h)
            heads, scaling = (1, E**-0.5) if full else (attn.num_heads, attn.scale)
            skip = 1 if site.kind == "shuffle" else 0  # the CLS query does not count
            scores = torch.stack([received_attention(_heads(q[i], heads), _heads(k[i], heads), scaling, skip=skip) for i in range(n)])
        keys = k if self.key_heads == "concat" else k.view(n, T, attn.num_heads, -1).mean(2)
        if site.kind == "shuffle":  # the CLS token never reaches the pixel shuffle
            scores, keys = square_tokens(scores[:, 1:], keys[:, 1:], math.isqrt(site.group))
        self._captured = {"cls": scores, "keys": keys}
        return None

    def _rewrite_patches(self, projector, args, kwargs):
        feats = kwargs["image_features"] if "image_features" in kwargs else args[0]
        cap = self._captured
        if not cap or feats.dim() != 3:
            return None
        n, P, _ = feats.shape
        off = cap["cls"].shape[1] - P  # 1: the projector never sees the CLS token ("default"); 0: it is row 0 ("full"), or there is none
        if off not in (0, 1):
            return None
        cls_row = off == 0 and self._site.kind == "cls"
        new, keeps = [], []
        for i in range(n):
            f, keep = self.reduce_image(feats[i], cap["cls"][i, off:], cap["keys"][i, off:], cls_tower=True, cls_row=cls_row)
            new.append(f[None])
            keeps.append(keep)
        if self._site.packing is not None:  # anyres: laid out by the model's packing (_wrap_packing)
            self._crop_keep = torch.stack(keeps)
            self._captured = {}
            return _replace_first(args, kwargs, "image_features", torch.cat(new))
        return _replace_first(args, kwargs, "image_features", self._emit(new, keeps))

    def _rewrite_shuffled(self, projector, args, y):
        cap = self._captured
        if not cap or not torch.is_tensor(y) or y.dim() != 3 or tuple(cap["cls"].shape) != tuple(y.shape[:2]):
            return None
        new, keeps = [], []
        for i in range(y.shape[0]):  # one tile at a time
            f, keep = self.reduce_image(y[i], cap["cls"][i], cap["keys"][i], cls_tower=True)
            new.append(f[None])
            keeps.append(keep)
        return self._emit(new, keeps)

    def _wrap_packing(self, owner) -> None:
        """Wrap ``owner.pack_image_features`` (an instance attribute over the class's
        method, removed in :meth:`teardown`): the per-crop keep masks are packed exactly
        as the features are, so the keep mask matches the placeholders."""
        original = owner.pack_image_features
        sig = inspect.signature(original)

        def pack(*args, **kwargs):
            crop_keep, self._crop_keep = self._crop_keep, None
            if crop_keep is None:
                return original(*args, **kwargs)
            bound = sig.bind(*args, **kwargs)
            feats = list(bound.arguments["image_features"])
            sizes = [f.shape[0] for f in feats]
            if sum(sizes) != crop_keep.shape[0] or any(f.shape[1] != crop_keep.shape[1] for f in feats):
                raise RuntimeError(f"{self.name}: {crop_keep.shape[0]} crops were scored, {sum(sizes)} are packed")
            keeps = torch.split(crop_keep, sizes)
            bound.arguments["image_features"] = [f * k[..., None].to(f.dtype) for f, k in zip(feats, keeps)]  # pruned: zero
            out = original(*bound.args, **bound.kwargs)
            bound.arguments["image_features"] = [k[..., None].to(feats[0].dtype) for k in keeps]
            bound.arguments["image_newline"] = torch.ones(1, dtype=feats[0].dtype, device=feats[0].device)  # newline tokens: kept
            packed = original(*bound.args, **bound.kwargs)[0]
            self._pending_keep = torch.cat([t[:, 0] > 0 for t in packed])
            return out

        owner.pack_image_features = pack

        def unwrap():
            if owner.__dict__.get("pack_image_features") is pack:
                del owner.pack_image_features

        self._unwrap = unwrap

    # -------------------------------------------------- merger towers (Qwen2-VL, Qwen2.5-VL)
    def _capture_grid(self, tower, args, kwargs):
        grid = kwargs["grid_thw"] if "grid_thw" in kwargs else (args[1] if len(args) > 1 else None)
        self._captured = {} if grid is None else {"grid": grid.detach()}
        if grid is not None and self._site.window_index is not None:
            self._captured["window"] = self._site.window_index(grid)
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
        scores, keys = group_tokens(cap["received"], cap["keys"], g)  # images hold whole merger windows
        window = cap.get("window")
        if window is not None:  # window order -> raster order (merger row r holds raster token window[r])
            window = window.to(y.device)
            order = torch.argsort(window)
            y, scores, keys = y[order], scores[order], keys[order]
        new, keeps, start = [], [], 0
        for n in cap["grid"].prod(-1).tolist():  # one image at a time
            G = n // g
            f, keep = self.reduce_image(y[start : start + G], scores[start : start + G], keys[start : start + G])
            new.append(f)
            keeps.append(keep)
            start += G
        out = self._emit(new, keeps)
        return out if window is None else out[window]  # back to window order: the tower restores raster order

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


def _normed(attn, which: str, h: torch.Tensor) -> torch.Tensor:
    """``q_proj`` / ``k_proj`` output, through the tower's query / key norm where it has
    one (InternViT's ``use_qk_norm``)."""
    out = getattr(attn, f"{which}_proj")(h)
    norm = getattr(attn, f"{which}_norm", None)
    return out if norm is None else norm(out)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[T, E]`` -> ``[heads, T, E / heads]``."""
    return x.view(x.shape[0], heads, -1).transpose(0, 1)


def _replace_first(args, kwargs, name: str, value: torch.Tensor):
    """Forward pre-hook result that swaps the module's first input for ``value``."""
    if name in kwargs:
        kwargs[name] = value
        return args, kwargs
    return (value,) + tuple(args[1:]), kwargs
