"""Model adapters: where a vision-language model keeps its parts, and how it is prompted.

Parts are found by walking the module tree for well-known names rather than by fixed
attribute paths, because transformers moves them between releases (LLaVA's decoder was
``model.language_model`` in 4.x and is ``model.model.language_model`` in 5.x).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Literal

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import Registry

ADAPTERS: Registry[type["ModelAdapter"]] = Registry("model family")

# The op whose output feeds a Linear, by the Linear's name inside its block: AWQ folds
# 1/s into it, which keeps the float model unchanged.  Llama / Qwen2 decoders and CLIP /
# SigLIP vision blocks.  A Linear with no entry (or whose predecessor's width does not
# match, e.g. v_proj -> o_proj under grouped-query attention) gets no scale.
LLAMA_CLIP_PREDECESSORS: dict[str, tuple[str, ...]] = {
    "self_attn.q_proj": ("input_layernorm", "layer_norm1"),
    "self_attn.k_proj": ("input_layernorm", "layer_norm1"),
    "self_attn.v_proj": ("input_layernorm", "layer_norm1"),
    "self_attn.o_proj": ("self_attn.v_proj",),
    "self_attn.out_proj": ("self_attn.v_proj",),
    "mlp.gate_proj": ("post_attention_layernorm",),
    "mlp.up_proj": ("post_attention_layernorm",),
    "mlp.down_proj": ("mlp.up_proj",),
    "mlp.fc1": ("layer_norm2",),
}


@dataclass(frozen=True)
class VisionScoring:
    """Where the vision-side pruners (VisionZip, PruMerge+) read a token's importance, and
    how the tower's patches become the language model's visual tokens.

    ``kind`` is the tower's shape:

    * ``cls``: a tower with a CLS token whose patches reach the projector one to one
      (CLIP under LLaVA / LLaVA-NeXT); the score is the CLS query's attention in
      ``attention`` (the encoder layer the method's reference reads: VisionZip the
      feature layer, PruMerge+ the one after it); merging rewrites the projector's input.
    * ``received``: a tower without CLS whose patches reach the projector one to one
      (SigLIP under LLaVA-OneVision); the score is the attention a patch receives in
      ``attention``, averaged over every query (EffiVLM-Bench's rule on OneVision);
      merging rewrites the projector's input.
    * ``merger``: a tower without CLS whose projector packs ``group`` consecutive patches
      into one LLM token (Qwen2-VL, Qwen2.5-VL); the score is the attention a patch
      receives in ``attention`` (a full-attention block), whose queries and keys take the
      tower's own ``rotary``; selection and merging act on the merger's output.
      ``window_index`` (Qwen2.5-VL): ``grid_thw -> [G]``, the raster index of the merged
      token at each row of the merger's input, which the tower permutes into attention
      windows before its blocks and restores after the merger.
    * ``shuffle``: a tower with a CLS token (dropped before the projector) whose
      pixel shuffle packs each ``side x side`` square of patches into one LLM token
      (``group = side**2``; InternVL); the score (``score``: the CLS query's attention, or
      the attention a patch receives from the other patches) is averaged over the square;
      selection and merging act on the projector's output.

    ``packing`` (anyres LLaVA-NeXT / OneVision): the module whose ``pack_image_features``
    lays each image's crops out as placeholders (base crop, then the grid unpadded to the
    image's aspect ratio with one newline token per row); per-crop keep decisions are
    mapped through it.  ``None``: crops (tiles, images) reach the placeholders in order.
    """

    kind: Literal["cls", "received", "merger", "shuffle"]
    attention: nn.Module
    projector: nn.Module
    group: int = 1
    rotary: Callable | None = None
    score: Literal["cls", "received"] | None = None  # shuffle towers: which attention scores a patch
    packing: nn.Module | None = None
    window_index: Callable | None = None


# Method families as ``vlmcompress list models`` reports them; a method's ``family``
# (``weight_quantization`` / ``weight_pruning`` -> weights) or, for FastV, its name.
METHOD_FAMILIES = ("weights", "kv_cache", "kv_eviction", "vision_tokens", "fastv")


def find_module(root: nn.Module, names: tuple[str, ...]) -> nn.Module | None:
    """The shallowest submodule whose own name (last path component) is in ``names``."""
    best: tuple[int, nn.Module] | None = None
    for path, module in root.named_modules():
        if path and path.rsplit(".", 1)[-1] in names:
            depth = path.count(".")
            if best is None or depth < best[0]:
                best = (depth, module)
    return best[1] if best else None


class ModelAdapter:
    """Answers the questions methods ask about one model family."""

    name: ClassVar[str] = ""  # the family's registry name
    model_types: ClassVar[tuple[str, ...]] = ()
    vision_names: ClassVar[tuple[str, ...]] = ("vision_tower",)
    projector_names: ClassVar[tuple[str, ...]] = ("multi_modal_projector",)
    scale_predecessors: ClassVar[dict[str, tuple[str, ...]]] = LLAMA_CLIP_PREDECESSORS

    def __init__(self, model: nn.Module, processor: Any) -> None:
        self.model = model
        self.processor = processor

    # ---------------------------------------------------------------- parts
    @property
    def language_model(self) -> nn.Module:
        lm = find_module(self.model, ("language_model",))
        if lm is None:
            raise RuntimeError(f"{type(self.model).__name__}: no language_model submodule found")
        return lm

    @property
    def decoder_layers(self) -> nn.ModuleList:
        return self.language_model.layers

    @property
    def vision_tower(self) -> nn.Module:
        tower = find_module(self.model, self.vision_names)
        if tower is None:
            raise RuntimeError(f"{type(self.model).__name__}: no vision tower found (looked for {self.vision_names})")
        return tower

    @property
    def projector(self) -> nn.Module:
        proj = find_module(self.model, self.projector_names)
        if proj is None:
            raise RuntimeError(f"{type(self.model).__name__}: no projector found (looked for {self.projector_names})")
        return proj

    @property
    def lm_head(self) -> nn.Module:
        return self.model.get_output_embeddings()

    @property
    def rotary_embedding(self) -> nn.Module:
        return self.language_model.rotary_emb

    @property
    def text_config(self):
        return self.model.config.get_text_config()

    @property
    def text_head_dim(self) -> int:
        cfg = self.text_config
        return int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)

    @property
    def text_kv_heads(self) -> int:
        cfg = self.text_config
        return int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)

    @property
    def attention_implementation(self) -> str:
        from ..methods.layout.fused import FUSED_ATTENTION  # here: methods import the model adapters' package

        impl = self.text_config._attn_implementation or "eager"
        # during an H2O-style prefill the text model runs SDPA with column sums
        return "sdpa" if impl == FUSED_ATTENTION else impl

    def self_attention(self, layer: nn.Module) -> nn.Module:
        """The attention module of one decoder layer."""
        attn = getattr(layer, "self_attn", None)
        if attn is None:
            raise ConfigError(f"{type(layer).__name__} has no self_attn; token eviction/pruning cannot hook this model")
        return attn

    def text_rotary(self, attn: nn.Module) -> Callable:
        """``apply_rotary_pos_emb(q, k, cos, sin)`` of the decoder's own modeling file (the
        language model of a LLaVA can be any causal LM; Qwen2-VL's folds the 3-D M-RoPE
        sections into ``cos``/``sin``)."""
        module = importlib.import_module(type(attn).__module__)
        fn = getattr(module, "apply_rotary_pos_emb", None)
        if fn is None:
            raise ConfigError(f"{type(attn).__name__}: no apply_rotary_pos_emb in {module.__name__}; token scoring cannot compute its queries")
        return fn

    def require_full_attention(self, method: str) -> None:
        """Refuse decoders with sliding-window or other non-full attention layers."""
        layer_types = set(getattr(self.text_config, "layer_types", None) or ["full_attention"])
        if layer_types - {"full_attention"}:
            raise ConfigError(f"{method}: only full-attention decoders are supported; this model has layer types {sorted(layer_types)}")

    # ---------------------------------------------------------------- vision tower
    @property
    def vision_layers(self) -> nn.ModuleList:
        """The vision encoder's list of layers (CLIP/SigLIP ``layers``, Qwen2-VL ``blocks``)."""
        layers = find_module(self.vision_tower, ("layers", "blocks"))
        if not isinstance(layers, nn.ModuleList):
            raise ConfigError(f"{type(self.vision_tower).__name__}: no encoder layer list found")
        return layers

    def vision_scoring(self, method: str) -> VisionScoring:
        """Where ``method`` (a vision-side pruner) scores tokens; refuses a family it cannot serve."""
        raise ConfigError(f"{method}: the {self.name} family has no vision-token scoring site")

    # ---------------------------------------------------------------- what it serves
    def refusal(self, family: str) -> str | None:
        """Why this model cannot serve a method family (one of :data:`METHOD_FAMILIES`), in
        one line, or ``None`` when it can.  It runs the same adapter checks the methods'
        ``check_model`` runs (knobs aside), so it cannot drift from what a run refuses."""
        from ..methods import METHODS
        from ..methods.layout.masks import SUPPORTED_ATTENTION

        if family not in METHOD_FAMILIES:
            raise ConfigError(f"unknown method family {family!r}; known: {', '.join(METHOD_FAMILIES)}")
        try:
            if family == "weights":
                if not len(self.decoder_layers):
                    return "the decoder has no layers"
            elif family == "kv_cache":
                self.require_full_attention("KV-cache quantization")
            elif family in ("kv_eviction", "fastv"):
                if self.attention_implementation not in SUPPORTED_ATTENTION:
                    return f"needs attention implementation one of {SUPPORTED_ATTENTION}; the model uses {self.attention_implementation!r}"
                for layer in self.decoder_layers:
                    self.self_attention(layer)
            else:
                for name in METHODS.names():
                    if METHODS.get(name).family == "vision_tokens":
                        self.vision_scoring(name)
        except ConfigError as exc:
            return str(exc)
        return None

    @property
    def image_token_id(self) -> int:
        return int(self.model.config.image_token_id)

    # ---------------------------------------------------------------- inputs
    def image_token_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``[B, T]`` bool: which positions hold visual tokens."""
        return input_ids == self.image_token_id

    def format_prompt(self, question: str) -> str:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True)

    def build_inputs(self, images: list, questions: list[str]) -> dict[str, torch.Tensor]:
        """Model inputs of a batch, left padded so that every row ends where generation starts."""
        tokenizer = self.processor.tokenizer
        tokenizer.padding_side = "left"
        prompts = [self.format_prompt(q) for q in questions]
        batch = self.processor(images=images, text=prompts, padding=True, return_tensors="pt")
        return dict(batch)

    def position_ids(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Positions the decoder's rotary embedding sees during prefill, ``[B, T]``
        (left padding makes each row start at 0 on its first real token)."""
        mask = batch["attention_mask"]
        return (mask.long().cumsum(-1) - 1).clamp(min=0)
