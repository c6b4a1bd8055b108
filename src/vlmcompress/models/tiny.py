"""Tiny random models of each family, built from configs with no download.

Used by the tests, the benchmarks (long sequences on a model whose every part is a real
transformers class) and ``vlmcompress tiny-model FAMILY DIR`` (a checkpoint that
``vlmcompress run --model DIR`` loads exactly as it loads a hub model).  They share the
embedded model's word-level tokenizer (built offline from the synthetic suite's closed
vocabulary), with each family's special tokens added, and its chat template with the
family's image placeholder.  Every family keeps the architectural feature that makes it
different (LLaVA-NeXT's anyres crops, unpadding and newline tokens; OneVision's SigLIP
tower; Qwen2.5-VL's window attention; InternVL's CLS tower, tiles and pixel shuffle), at
sizes that run on a CPU in milliseconds: 64x64 images, 32x32 crops / tiles, 2x2 grids.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from ..embedded.build import CHAT_TEMPLATE, IMAGE_MEAN, IMAGE_STD, build_processor, build_tokenizer

QWEN_CHAT_TEMPLATE = CHAT_TEMPLATE.replace("<image>", "<|vision_start|><|image_pad|><|vision_end|>")
INTERNVL_CHAT_TEMPLATE = CHAT_TEMPLATE.replace("<image>", "<IMG_CONTEXT>")

CROP = 32  # anyres crop / InternVL tile side, in pixels
# anyres grids of CROP-sized crops up to 2x2 (a 64x64 image is a 2x2 grid plus the base crop)
GRID_PINPOINTS = [[CROP, CROP], [CROP, 2 * CROP], [2 * CROP, CROP], [2 * CROP, 2 * CROP]]


def _text_config(kind: str, tok, hidden: int, layers: int, heads: int, kv_heads: int, **extra):
    """The decoder of a family: ``llama`` (LLaVA-1.5, LLaVA-NeXT) or ``qwen2`` (OneVision, InternVL)."""
    from transformers import LlamaConfig, Qwen2Config

    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[kind]
    return cls(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=16384,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **extra,
    )


def _finish(model, tok):
    model = model.eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    return model


def tiny_llava(hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2, seed: int = 0):
    """LLaVA-1.5: CLIP (CLS token), one 64x64 image = 64 tokens, Llama decoder."""
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

    processor = build_processor()
    tok = processor.tokenizer
    torch.manual_seed(seed)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=64, patch_size=8),
        text_config=_text_config("llama", tok, hidden, layers, heads, kv_heads),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=64,
        pad_token_id=tok.pad_token_id,
    )
    return _finish(LlavaForConditionalGeneration(config), tok), processor


def tiny_llava_next(hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2, seed: int = 0):
    """LLaVA-NeXT (1.6): CLIP with CLS on 32x32 crops (16 patches each); anyres grids up to
    2x2 crops plus the base crop, unpadded to the image's aspect ratio, one
    ``image_newline`` token per row; Llama decoder.  A 64x64 image is 16 + 64 + 8 = 88 tokens."""
    from transformers import CLIPVisionConfig, LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextImageProcessor, LlavaNextProcessor

    tok = build_tokenizer()
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": CROP}, crop_size={"height": CROP, "width": CROP}, image_grid_pinpoints=GRID_PINPOINTS,
        image_mean=IMAGE_MEAN, image_std=IMAGE_STD,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor, tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE, image_token="<image>",
    )
    torch.manual_seed(seed)
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=CROP, patch_size=8),
        text_config=_text_config("llama", tok, hidden, layers, heads, kv_heads),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=GRID_PINPOINTS,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=(CROP // 8) ** 2,
        pad_token_id=tok.pad_token_id,
    )
    return _finish(LlavaNextForConditionalGeneration(config), tok), processor


def tiny_llava_onevision(hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2, seed: int = 0, vision_aspect_ratio: str = "anyres_max_9"):
    """LLaVA-OneVision: SigLIP (no CLS token, every patch reaches the projector:
    ``vision_feature_select_strategy="full"``, the last layer as feature layer) on 32x32
    crops, anyres grids up to 2x2 with unpadding and newline tokens, ``anyres_max_N``
    downscaling of large grids; Qwen2 decoder."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
        SiglipVisionConfig,
    )

    tok = build_tokenizer({"image_token": "<image>", "video_token": "<video>"})
    kw = dict(size={"height": CROP, "width": CROP}, image_mean=IMAGE_MEAN, image_std=IMAGE_STD)
    image_processor = LlavaOnevisionImageProcessor(image_grid_pinpoints=GRID_PINPOINTS, **kw)
    video_processor = LlavaOnevisionVideoProcessor(**kw)
    processor = LlavaOnevisionProcessor(
        image_processor=image_processor, tokenizer=tok, video_processor=video_processor, num_image_tokens=(CROP // 8) ** 2,
        vision_feature_select_strategy="full", chat_template=CHAT_TEMPLATE, image_token="<image>", video_token="<video>",
        vision_aspect_ratio=vision_aspect_ratio,
    )
    torch.manual_seed(seed)
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=CROP, patch_size=8),
        text_config=_text_config("qwen2", tok, hidden, layers, heads, kv_heads),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        video_token_id=tok.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=GRID_PINPOINTS,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        vision_aspect_ratio=vision_aspect_ratio,
        pad_token_id=tok.pad_token_id,
    )
    return _finish(LlavaOnevisionForConditionalGeneration(config), tok), processor


def _qwen_processor(processor_cls):
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    tok = build_tokenizer(
        {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>", "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"}
    )
    kw = dict(min_pixels=32 * 32, max_pixels=64 * 64, patch_size=8, merge_size=2, temporal_patch_size=2)
    return processor_cls(
        image_processor=Qwen2VLImageProcessor(**kw), tokenizer=tok, video_processor=Qwen2VLVideoProcessor(**kw), chat_template=QWEN_CHAT_TEMPLATE
    )


def _qwen_config(config_cls, tok, hidden, layers, heads, kv_heads, vision: dict):
    head_dim = hidden // heads
    return config_cls(
        text_config=dict(
            vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=16384,
            rope_parameters={"rope_type": "default", "mrope_section": [head_dim // 4, head_dim // 8, head_dim // 8], "rope_theta": 10000.0},
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        ),
        vision_config=dict(patch_size=8, spatial_merge_size=2, temporal_patch_size=2, in_channels=3, **vision),
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
    )


def tiny_qwen2_vl(hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2, seed: int = 0):
    """Qwen2-VL: a 64x64 image = 8x8 patches, merged 2x2 into 16 tokens; M-RoPE decoder."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

    processor = _qwen_processor(Qwen2VLProcessor)
    tok = processor.tokenizer
    torch.manual_seed(seed)
    config = _qwen_config(Qwen2VLConfig, tok, hidden, layers, heads, kv_heads, dict(depth=2, embed_dim=32, hidden_size=hidden, num_heads=2))
    return _finish(Qwen2VLForConditionalGeneration(config), tok), processor


def tiny_qwen2_5_vl(hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2, seed: int = 0):
    """Qwen2.5-VL: as Qwen2-VL, with a window-attention tower (32-pixel windows: a 64x64
    image is 4 windows of 2x2 merged tokens, so the patches are permuted into window
    order before the blocks) whose blocks 1 and 3 attend to the whole image
    (``fullatt_block_indexes``), RMSNorm and gated MLPs."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

    processor = _qwen_processor(Qwen2_5_VLProcessor)
    tok = processor.tokenizer
    torch.manual_seed(seed)
    vision = dict(depth=4, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=hidden, window_size=32, fullatt_block_indexes=[1, 3])
    config = _qwen_config(Qwen2_5_VLConfig, tok, hidden, layers, heads, kv_heads, vision)
    return _finish(Qwen2_5_VLForConditionalGeneration(config), tok), processor


def tiny_internvl(hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2, seed: int = 0):
    """InternVL (transformers-native, as ``OpenGVLab/InternVL3-1B-hf``): InternViT with a
    CLS token on 32x32 tiles of 8x8 patches (patch 4), pixel-shuffled 2x2 into 16 tokens
    per tile; a 64x64 image is 2x2 tiles plus a thumbnail (80 tokens); Qwen2 decoder."""
    from transformers import GotOcr2ImageProcessor, InternVLConfig, InternVLForConditionalGeneration, InternVLProcessor, InternVLVideoProcessor
    from transformers.models.internvl.configuration_internvl import InternVLVisionConfig

    tok = build_tokenizer({"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"})
    patch = 4
    seq = (CROP // patch) ** 2 // 4
    image_processor = GotOcr2ImageProcessor(
        size={"height": CROP, "width": CROP}, crop_to_patches=True, min_patches=1, max_patches=4, image_mean=IMAGE_MEAN, image_std=IMAGE_STD
    )
    video_processor = InternVLVideoProcessor(size={"height": CROP, "width": CROP}, image_mean=IMAGE_MEAN, image_std=IMAGE_STD)
    processor = InternVLProcessor(image_processor=image_processor, tokenizer=tok, video_processor=video_processor, image_seq_length=seq, chat_template=INTERNVL_CHAT_TEMPLATE)
    torch.manual_seed(seed)
    config = InternVLConfig(
        vision_config=InternVLVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=[CROP, CROP], patch_size=[patch, patch]
        ),
        text_config=_text_config("qwen2", tok, hidden, layers, heads, kv_heads),
        image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=seq,
        downsample_ratio=0.5,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        pad_token_id=tok.pad_token_id,
    )
    return _finish(InternVLForConditionalGeneration(config), tok), processor


# family name (the model_type it writes) -> builder
TINY_BUILDERS: dict[str, Callable] = {
    "llava": tiny_llava,
    "llava_next": tiny_llava_next,
    "llava_onevision": tiny_llava_onevision,
    "qwen2_vl": tiny_qwen2_vl,
    "qwen2_5_vl": tiny_qwen2_5_vl,
    "internvl": tiny_internvl,
}


def build_tiny(family: str, **kwargs):
    """``(model, processor)`` of the tiny model of ``family`` (one of :data:`TINY_BUILDERS`)."""
    from ..errors import ConfigError

    if family not in TINY_BUILDERS:
        raise ConfigError(f"no tiny model for {family!r}; choose one of {', '.join(TINY_BUILDERS)}")
    return TINY_BUILDERS[family](**kwargs)


def save_tiny(model, processor, folder: Path) -> Path:
    """Save as ``from_pretrained`` expects (safetensors, and the processor with its
    tokenizer, image processor and chat template)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    return folder


def family_support(model_type: str) -> dict[str, str | None]:
    """``{method family: None (served) or the one-line refusal}`` of ``model_type``, as its
    adapter answers for the family's tiny model (built on the ``meta`` device: structure and
    config only, no weights), i.e. by the same checks a run makes before any work."""
    from .base import METHOD_FAMILIES
    from .loading import adapter_class_for

    with torch.device("meta"):
        model, processor = build_tiny(model_type)
    adapter = adapter_class_for(model.config.model_type)(model, processor)
    return {family: adapter.refusal(family) for family in METHOD_FAMILIES}
