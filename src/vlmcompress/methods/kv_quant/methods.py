"""The registered KV-cache quantization methods: ``kv_uniform``, ``kv_outlier``, ``kv_group``
and ``kivi``.  Each one only says how keys and values are laid out (a pair of
:class:`~.cache.StreamSpec`); the cache in :mod:`.cache` does the rest.

Channel groups larger than the model's ``head_dim`` (e.g. ``v_group=128`` on a model with
``head_dim=64``) are refused in ``make_cache`` with a :class:`ConfigError` naming the knob and
the head_dim, rather than silently clamped: a clamped group would be a different setting
under the same name.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar, Literal, Optional

import torch

from ...errors import ConfigError
from ..base import METHODS, CompressionContext, CompressionMethod
from . import layouts as L
from .cache import QuantizedKVCache, StreamSpec

Axis = Literal["channel", "token"]


def left_pad_lengths(attention_mask: torch.Tensor | None) -> list[int] | None:
    """Leading padding of each row of a left-padded ``[B, T]`` mask (refuses other paddings)."""
    if attention_mask is None:
        return None
    mask = attention_mask.bool()
    real = mask.sum(-1)
    pads = (mask.shape[-1] - real).tolist()
    # left padding: the row's ones are exactly its last `real` positions
    expect = torch.arange(mask.shape[-1], device=mask.device).unsqueeze(0) >= (mask.shape[-1] - real).unsqueeze(1)
    if not torch.equal(mask, expect):
        raise ValueError("the quantized KV cache needs a left-padded batch (attention_mask of the form 0…01…1 per row)")
    return [int(p) for p in pads]


def _store_dtype(model) -> torch.dtype:
    """Residual tokens are kept in 16 bits, as in the 16-bit cache they are compared with: the
    model's dtype when it computes in a 16-bit one (what its own cache would hold), else its
    reference dtype (the checkpoint's 16-bit dtype, see :mod:`vlmcompress.footprint`; a
    float32 run on a CPU stores the residual as a GPU user's cache would)."""
    from ...footprint import REFERENCE_DTYPES, reference_dtype

    return model.dtype if model.dtype in REFERENCE_DTYPES else reference_dtype(model)


@dataclass
class KVQuantMethod(CompressionMethod):
    """Shared plumbing of the KV-cache quantizers (not registered itself)."""

    hook: ClassVar[str] = "kv_cache"
    family: ClassVar[str | None] = "kv_cache"

    # False = KIVI: a token is attended at full precision in the forward that produced it,
    # so the prompt's own attention is exact; True = attention always reads the cache as
    # stored, the prompt's own attention included (see cache.py)
    attend_quantized: bool = False

    def stream_specs(self) -> tuple[StreamSpec, StreamSpec]:  # pragma: no cover - abstract
        raise NotImplementedError

    def check_fits(self, head_dim: int) -> None:
        """Refuse per-token channel groups that do not divide ``head_dim``."""
        for knob in ("k", "v"):
            spec = self.stream_specs()[0 if knob == "k" else 1]
            lay = spec.layout
            if lay.kind == "token" and (lay.group > head_dim or head_dim % lay.group):
                name = self.group_knob(knob)
                raise ConfigError(
                    f"{self.name}: {name}={lay.group} groups {lay.group} channels of one token, but this model's head_dim={head_dim}; "
                    f"choose a {name} that divides {head_dim}"
                )

    def group_knob(self, which: str) -> str:
        return f"{which}_group"

    def build_cache(self, num_layers: int, head_dim: int, pad_lengths: list[int] | None, store_dtype: torch.dtype = torch.float16) -> QuantizedKVCache:
        self.check_fits(head_dim)
        key_spec, value_spec = self.stream_specs()
        return QuantizedKVCache(
            num_layers, key_spec, value_spec, pad_lengths=pad_lengths, store_dtype=store_dtype, attend_quantized=self.attend_quantized
        )

    def check_model(self, ctx: CompressionContext) -> None:
        ctx.adapter.require_full_attention(self.name)
        self.check_fits(ctx.adapter.text_head_dim)

    def make_cache(self, ctx: CompressionContext, batch: dict) -> QuantizedKVCache:
        adapter = ctx.adapter
        self.check_model(ctx)
        n_layers = adapter.text_config.num_hidden_layers
        return self.build_cache(n_layers, adapter.text_head_dim, left_pad_lengths(batch.get("attention_mask")), _store_dtype(ctx.model))

    def check_bits(self) -> None:
        self.check_choice("bits", L.KV_BITS)


@METHODS.register
@dataclass
class KVUniform(KVQuantMethod):
    """Uniform KV quantization ("u" in LVLM-Compress-Bench, Khanal et al. 2025; GEAR's
    ``fake_uniformquantize``): one (min, max) over the whole layer tensor of one sample.

    The range is set by the prompt's keys (values) of that sample at prefill; each generated
    token is then quantized once with that same range (values outside it clamp) instead of
    re-quantizing the whole cache every step as GEAR's code does.
    """

    name: ClassVar[str] = "kv_uniform"
    bits: int = 4  # code width: 2, 3, 4 or 8
    # LVLM-Compress-Bench's u/o/g (GEAR-based code) quantize the prompt's cache and attend
    # to it, so the prompt's own attention already reads quantized K/V (KIVI does not)
    attend_quantized: bool = True

    def validate(self) -> None:
        self.check_bits()

    def stream_specs(self) -> tuple[StreamSpec, StreamSpec]:
        spec = StreamSpec(L.KVLayout("tensor", self.bits), "fixed_range")
        return spec, spec


@METHODS.register
@dataclass
class KVOutlier(KVQuantMethod):
    """Outlier-aware KV quantization ("o" in LVLM-Compress-Bench; the dense + sparse split of
    GEAR, Kang et al. 2024): per sample and layer tensor the ``outlier_frac`` most extreme
    values (half the largest, half the smallest, signed) are kept in fp16 with an int32
    index, the rest is quantized with one range taken over the inliers only.

    Generated tokens use the prompt's range and keep the same share of their own extreme
    values in fp16.
    """

    name: ClassVar[str] = "kv_outlier"
    bits: int = 4  # code width: 2, 3, 4 or 8
    # LVLM-Compress-Bench's u/o/g (GEAR-based code) quantize the prompt's cache and attend
    # to it, so the prompt's own attention already reads quantized K/V (KIVI does not)
    attend_quantized: bool = True
    outlier_frac: float = 0.01  # share of values kept in fp16 (papers: 0.01–0.10)

    def validate(self) -> None:
        self.check_bits()
        self.check_range("outlier_frac", 0.0, 0.5, low_open=True)

    def stream_specs(self) -> tuple[StreamSpec, StreamSpec]:
        spec = StreamSpec(L.KVLayout("tensor", self.bits), "fixed_range", outlier_frac=self.outlier_frac)
        return spec, spec


def _group_specs(bits: int, k_axis: str, k_group: int, v_axis: str, v_group: int, residual: int) -> tuple[StreamSpec, StreamSpec]:
    key = StreamSpec(L.KVLayout(k_axis, bits, k_group), "block", residual)
    value = StreamSpec(L.KVLayout(v_axis, bits, v_group), "window", residual)
    return key, value


def _validate_group(method: CompressionMethod, k_axis: str, k_group: int, v_axis: str, v_group: int, residual: int, kg_name: str, vg_name: str) -> None:
    for knob, axis in (("k_axis", k_axis), ("v_axis", v_axis)):
        if axis not in L.AXES:
            raise ConfigError(f"{method.name}: {knob}={axis!r} is not allowed; allowed: {', '.join(L.AXES)}")
    for knob, g in ((kg_name, k_group), (vg_name, v_group)):
        if not isinstance(g, int) or g < 1:
            raise ConfigError(f"{method.name}: {knob}={g!r} must be a positive integer")
    if not isinstance(residual, int) or residual < 0:
        raise ConfigError(f"{method.name}: residual={residual!r} must be a non-negative integer")
    if k_axis == "channel" and (residual == 0 or residual % k_group):
        raise ConfigError(
            f"{method.name}: residual={residual} is not a positive multiple of {kg_name}={k_group}: keys are quantized per channel "
            f"one full block of `residual` tokens at a time, in groups of {kg_name} tokens"
        )


@METHODS.register
@dataclass
class KVGroup(KVQuantMethod):
    """Group-wise KV quantization with an fp16 residual window ("g" in LVLM-Compress-Bench;
    KIVI, Liu et al. 2024, when keys are per-channel and values per-token).

    ``*_axis=channel``: a group is ``*_group`` consecutive tokens of one channel;
    ``*_axis=token``: a group is ``*_group`` consecutive channels of one token.  Keys wait in
    fp16 until a full block of ``residual`` tokens is there; values are quantized as they
    leave the window of the newest ``residual`` tokens.  Every token is quantized once.

    ``label`` sets the four layout knobs from an LVLM-Compress-Bench label
    (``g-KC128VT128``); it is folded into them, so the normalised spec spells them out.
    "KC128" is a group of 128 consecutive tokens per key channel and "VT128" a group of
    128 consecutive channels per value token, as GEAR's ``KIVI_V2`` path quantizes them
    (``fake_groupwise_channel_asymmetric_quantization_new`` with ``group_size`` tokens,
    ``fake_groupwise_token_asymmetric_quantization`` with ``group_size`` channels).  (GEAR's
    plain ``KCVT`` passes the whole sequence as the key group and all channels as the value
    group: per-channel over the sequence, per-token over the channels.)  GEAR flattens the
    heads before grouping value channels, so a value group may span heads there; here a
    group must divide ``head_dim`` (identical when ``v_group = head_dim = 128``).
    """

    name: ClassVar[str] = "kv_group"
    bits: int = 2  # code width: 2, 3, 4 or 8
    # LVLM-Compress-Bench's u/o/g (GEAR-based code) quantize the prompt's cache and attend
    # to it, so the prompt's own attention already reads quantized K/V (KIVI does not)
    attend_quantized: bool = True
    k_axis: Axis = "channel"  # keys: per-channel (groups of tokens) or per-token (groups of channels)
    k_group: int = 128  # keys: tokens (channel axis) or channels (token axis) per group
    v_axis: Axis = "token"  # values: per-channel or per-token
    v_group: int = 128  # values: tokens (channel axis) or channels (token axis) per group
    residual: int = 128  # R: fp16 window in tokens; a multiple of k_group when k_axis=channel
    label: Optional[str] = None  # e.g. "g-KC128VT128": sets k_axis/k_group/v_axis/v_group

    def __post_init__(self) -> None:
        if self.label is None:
            return
        try:
            family, k_axis, k_group, v_axis, v_group = L.parse_label(self.label)
        except ValueError as exc:
            raise ConfigError(f"kv_group: label: {exc}") from None
        if family != "g":
            raise ConfigError(f"kv_group: label={self.label!r} is a '{family}' label; kv_group takes 'g-…' labels (use kv_uniform / kv_outlier)")
        defaults = {f.name: f.default for f in fields(self)}
        wanted = {"k_axis": k_axis, "k_group": k_group, "v_axis": v_axis, "v_group": v_group}
        for knob, value in wanted.items():
            current = getattr(self, knob)
            if current != defaults[knob] and current != value:
                raise ConfigError(f"kv_group: {knob}={current!r} contradicts label={self.label!r} ({knob}={value!r})")
            setattr(self, knob, value)
        self.label = None

    def validate(self) -> None:
        self.check_bits()
        _validate_group(self, self.k_axis, self.k_group, self.v_axis, self.v_group, self.residual, "k_group", "v_group")

    def stream_specs(self) -> tuple[StreamSpec, StreamSpec]:
        return _group_specs(self.bits, self.k_axis, self.k_group, self.v_axis, self.v_group, self.residual)


@METHODS.register
@dataclass
class Kivi(KVQuantMethod):
    """KIVI (Liu et al. 2024, "KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV
    Cache"): keys per-channel in groups of ``group`` tokens, values per-token in groups of
    ``group`` channels, fp16 residual of ``residual`` tokens (the last ``T mod R`` keys and
    the last ``R`` values).  The paper's defaults: G=32, R=128.  Same as
    ``kv_group(k_axis=channel, k_group=G, v_axis=token, v_group=G, residual=R)``.
    """

    name: ClassVar[str] = "kivi"
    bits: int = 2  # code width: 2, 3, 4 or 8
    group: int = 32  # G: tokens per key group, channels per value group
    residual: int = 128  # R: fp16 window in tokens, a multiple of group

    def validate(self) -> None:
        self.check_bits()
        _validate_group(self, "channel", self.group, "token", self.group, self.residual, "group", "group")

    def group_knob(self, which: str) -> str:
        return "group"

    def stream_specs(self) -> tuple[StreamSpec, StreamSpec]:
        return _group_specs(self.bits, "channel", self.group, "token", self.group, self.residual)
