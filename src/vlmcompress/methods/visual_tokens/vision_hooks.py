"""Shared plumbing of the vision-side pruners (VisionZip, PruMerge+): score the tokens
the projector will see from the vision tower's own attention, rewrite the projector's
input (merging), and tell the decoder which visual tokens survive (dropped before
decoder layer 0, so the language model runs on the shorter sequence; kept tokens keep
their original positions, 1-D RoPE or Qwen2-VL's 3-D M-RoPE alike, because the layout
gathers the model's own rotary ``cos``/``sin`` at the kept tokens' original slots).

Two tower shapes:

* **CLS towers** (CLIP/SigLIP under LLaVA): the score of a patch is the attention the
  CLS query pays it at the feature layer (summed over heads), the paper's definition;
  keys for similarity are the feature layer's, averaged over heads; one patch = one LLM
  token.
* **Merger towers** (Qwen2-VL): there is no CLS token, the last block's output goes to
  the PatchMerger, which packs every ``m x m`` window of patches (``m*m`` consecutive
  rows) into ONE LLM token.  "CLS attention" becomes the mean attention a patch
  *receives* in the last block, from every patch of its own image (images attend only
  within themselves, ``cu_seqlens``), averaged over heads and queries: a CLS row is one
  summary query's view of the image, and without one the average over all queries is
  the query-independent stand-in (FastV's "attention received" inside the LLM is the
  same idea).  Selection happens at the granularity of LLM tokens: a window's score is
  the sum of its patches' (its share of the image's attention), its key for similarity
  the concatenation of its patches' head-averaged keys, and merging averages whole
  windows (all ``m*m`` patch rows at once) before the merger's LayerNorm and MLP, so a
  merged token is still one merger input.  Budgets count LLM tokens, per image.

Which shape a model has, and where its scored attention sits, is the adapter's answer
(:meth:`~vlmcompress.models.base.ModelAdapter.vision_scoring`); a family it cannot serve
is refused there with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..layout import LayoutMethod
from .select import group_tokens, received_attention


@dataclass
class VisionTokenMethod(LayoutMethod):
    hook: ClassVar[str] = "vision"

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
    def reduce_image(self, features: torch.Tensor, cls_attention: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One image: ``features`` ``[P, C]`` (projector input, one row per LLM token),
        ``cls_attention`` ``[P]`` (the token's attention score: CLS attention, or the
        attention its merger window receives), ``keys`` ``[P, Dm]`` -> (new features
        ``[P, C]``, keep mask ``[P]``)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- hooks
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
                site.projector.register_forward_pre_hook(self._rewrite_groups, with_kwargs=True),
            ]

    def teardown(self, ctx) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _emit(self, new: list[torch.Tensor], keeps: list[torch.Tensor]) -> torch.Tensor:
        """Record the batch's keep mask over all its image tokens (images in batch order,
        which is the order the model scatters them into the placeholders) and return the
        rewritten projector input."""
        # transformers 5.x generate encodes images BEFORE the prefill forward (its
        # ``mm_encoder_outputs``), so the keep mask waits here for decoder layer 0
        self._pending_keep = torch.cat(keeps)
        self._captured = {}
        return torch.cat(new)

    # -------------------------------------------------- CLS towers (LLaVA family)
    def _capture_cls(self, attn, args, kwargs):
        h = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        n, T, _ = h.shape
        heads, hd = attn.num_heads, attn.head_dim
        q = attn.q_proj(h[:, :1]).view(n, 1, heads, hd).transpose(1, 2)
        k = attn.k_proj(h).view(n, T, heads, hd).transpose(1, 2)
        probs = (torch.matmul(q.float(), k.float().transpose(-1, -2)) * attn.scale).softmax(-1)[:, :, 0]  # [n, heads, T]
        self._captured = {"cls": probs.sum(1), "keys": k.mean(1)}  # summed over heads; keys averaged over heads
        return None

    def _rewrite_cls(self, projector, args, kwargs):
        feats = kwargs["image_features"] if "image_features" in kwargs else args[0]
        cap = self._captured
        if not cap or feats.dim() != 3:
            return None
        n, P, _ = feats.shape
        off = cap["cls"].shape[1] - P  # the projector never sees the CLS token under "default"
        if off not in (0, 1):
            return None
        new, keeps = [], []
        for i in range(n):
            f, keep = self.reduce_image(feats[i], cap["cls"][i, off:], cap["keys"][i, off:])
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
        q, k = self._rotary(q, k, cos, sin)
        q, k = q.transpose(0, 1), k.transpose(0, 1)  # [H, N, D]
        received = torch.empty(N, dtype=torch.float32, device=h.device)
        bounds = cu.tolist()
        for s, e in zip(bounds[:-1], bounds[1:]):  # attention never crosses an image (or a video frame)
            received[s:e] = received_attention(q[:, s:e], k[:, s:e], attn.scaling)
        self._captured.update(received=received, keys=k.mean(0))
        return None

    def _rewrite_groups(self, merger, args, kwargs):
        x = kwargs["x"] if "x" in kwargs else args[0]
        cap = self._captured
        if "received" not in cap or x.dim() != 2 or x.shape[0] != cap["received"].numel():
            return None
        g, C = self._group, x.shape[-1]
        new, keeps, start = [], [], 0
        for n in cap["grid"].prod(-1).tolist():  # one image at a time
            scores, keys, feats = group_tokens(cap["received"][start : start + n], cap["keys"][start : start + n], x[start : start + n], g)
            f, keep = self.reduce_image(feats, scores, keys)
            new.append(f.reshape(n, C))
            keeps.append(keep)
            start += n
        return _replace_first(args, kwargs, "x", self._emit(new, keeps))

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
