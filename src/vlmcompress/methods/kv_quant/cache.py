"""The quantized KV cache as a transformers cache layer, and its residual-window bookkeeping.

How it hooks into transformers 5.x: a :class:`~transformers.cache_utils.Cache` is a list of
per-layer cache objects whose ``update(key_states, value_states)`` is called by every
attention layer with the new ``[B, H, t, D]`` states and returns the keys and values that
attention then reads.  :class:`QuantizedKVLayer` subclasses the library's
``BaseQuantizedLayer`` (a ``DynamicLayer`` whose length is tracked in ``cumulative_length``)
and :class:`QuantizedKVCache` subclasses ``Cache`` with one such layer per decoder layer; the
cache is passed to ``generate(past_key_values=...)``.  Nothing is patched.

Each sample of a batch is stored on its own (a :class:`KVStream` per sample, per layer, for
keys and for values), because with left padding samples hold different numbers of real
tokens, hence different block boundaries and residual lengths.  Padding positions are never
stored: the layer is told each row's number of left-pad tokens and drops them from the
first states it receives; when attention reads the cache, padding positions come back as
zeros (the attention mask hides them).  So a sample's codes, ranges and bytes are the same
alone and inside any padded batch.  Token dropping and eviction (``methods/layout``)
write each row's kept entries right-aligned into a layer sized for the batch's largest
row; before a layer's first states arrive they tell it each row's count of leading spare
slots (``set_leading_padding``), which then count as padding: never stored, never counted.

Residual bookkeeping (KIVI, Liu et al. 2024, "KIVI: A Tuning-Free Asymmetric 2bit
Quantization for KV Cache"): a stream keeps its newest tokens in fp16 and quantizes the
oldest ones exactly once, by one of three rules (see :class:`StreamSpec`):

- ``block`` (keys): tokens wait in fp16 until a full block of ``residual`` tokens is there,
  then the block is quantized.  After ``n`` tokens, ``n mod R`` keys are fp16.
- ``window`` (values): the newest ``residual`` tokens stay fp16; older ones are quantized as
  they leave the window.  After ``n`` tokens, ``min(n, R)`` values are fp16.
- ``fixed_range`` (kv_uniform / kv_outlier): the first states (the prompt) set one range
  per sample and layer tensor; they and every later token are quantized with it at once.

As in KIVI and in transformers' ``QuantizedLayer``, the states quantized during an
``update`` are returned at full precision for that call's attention (KIVI quantizes after
computing attention); every later call reads them dequantized.  Prefill attention is thus
exact and quantization error reaches the answer from the second generated token on.  With
``attend_quantized=True`` attention always reads the cache as stored, the prompt's own
attention included (simulated quantization as GEAR-style evaluation code does it); short
answers (one word) are only affected by KV quantization in that mode.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Literal

import torch
from transformers.cache_utils import BaseQuantizedLayer, Cache

from ...errors import ConfigError
from ...quant.packing import packed_length
from . import layouts as L

log = logging.getLogger(__name__)

Rule = Literal["block", "window", "fixed_range"]


@dataclass(frozen=True)
class StreamSpec:
    """How one of keys/values of one layer is stored."""

    layout: L.KVLayout
    rule: Rule
    residual: int = 0  # R: block length (``block``) or window length (``window``), in tokens
    outlier_frac: float = 0.0  # ``fixed_range`` only: share of values kept in fp16

    def n_fp16(self, n: int) -> int:
        """Tokens of a stream of ``n`` tokens that are in the fp16 residual."""
        unit = self.layout.token_unit
        if self.rule == "block":
            block = self.residual or unit
            return n % block
        if self.rule == "window":
            if n <= self.residual:
                return n
            return self.residual + (n - self.residual) % unit
        return 0

    def n_outliers(self, heads: int, head_dim: int, n: int, n_first: int) -> int:
        """fp16 outliers held after ``n`` tokens: a share of the first chunk's values, then
        the same share of each later token's values."""
        if self.rule != "fixed_range" or self.outlier_frac <= 0 or n == 0:
            return 0
        return L.n_outliers(heads * n_first * head_dim, self.outlier_frac) + (n - n_first) * L.n_outliers(heads * head_dim, self.outlier_frac)


def analytic_bytes(spec: StreamSpec, heads: int, head_dim: int, n: int, n_first: int | None = None, residual_bytes: int = 2) -> int:
    """Bytes a stream of ``n`` tokens holds by the formula (codes + fp16 scale/zero +
    outliers with int32 index + fp16 residual), without looking at any tensor."""
    lay = spec.layout
    n_r = spec.n_fp16(n)
    n_q = n - n_r
    codes = heads * n_q * packed_length(head_dim, lay.bits)
    if lay.kind == "channel":
        params = heads * (n_q // lay.group) * head_dim
    elif lay.kind == "token":
        params = heads * n_q * (head_dim // lay.group)
    else:
        params = 1 if n_q else 0
    outliers = spec.n_outliers(heads, head_dim, n_q, n if n_first is None else n_first) if n_q else 0
    value_bytes = torch.finfo(L.PARAM_DTYPE).bits // 8
    return codes + 2 * params * value_bytes + outliers * (value_bytes + torch.iinfo(L.INDEX_DTYPE).bits // 8) + heads * n_r * head_dim * residual_bytes


def fp16_bytes(heads: int, head_dim: int, n: int) -> int:
    """Bytes of the same ``n`` tokens of one of keys/values in an fp16 ``DynamicCache``."""
    return heads * n * head_dim * 2


def _storage_bytes(t: torch.Tensor | None) -> int:
    """Bytes of the memory a tensor keeps alive (its whole storage, not only its view)."""
    if t is None:
        return 0
    return t.untyped_storage().nbytes()


class KVStream:
    """Keys (or values) of one sample in one layer: packed codes, fp16 scale/zero, optional
    fp16 outliers, and the fp16 residual of tokens not quantized yet."""

    def __init__(self, spec: StreamSpec, heads: int, head_dim: int, device: torch.device, store_dtype: torch.dtype) -> None:
        self.spec = spec
        self.heads, self.head_dim = heads, head_dim
        self.store_dtype = store_dtype
        lay = spec.layout
        self.packed = torch.empty(1, heads, 0, packed_length(head_dim, lay.bits), dtype=torch.uint8, device=device)
        self.scale: torch.Tensor | None = None
        self.zero: torch.Tensor | None = None
        self.residual = torch.empty(1, heads, 0, head_dim, dtype=store_dtype, device=device)
        self.outlier_idx = torch.empty(0, dtype=L.INDEX_DTYPE, device=device)  # token-major flat index
        self.outlier_val = torch.empty(0, dtype=L.PARAM_DTYPE, device=device)
        self.n_tokens = 0
        self.n_quantized = 0
        self.n_first: int | None = None  # tokens of the first chunk (sets the fixed range)
        self.tokens_sent_to_quantizer = 0  # every token handed to the quantizer, counted once per hand-over

    # ---------------------------------------------------------------- read
    def read(self, dtype: torch.dtype) -> torch.Tensor:
        """``[1, H, n, D]``: dequantized tokens, then the fp16 residual, in ``dtype``."""
        parts = []
        if self.n_quantized:
            parts.append(self._dequantized(dtype))
        parts.append(self.residual.to(dtype))
        return torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]

    def _dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        lay = self.spec.layout
        scale, zero = self.scale, self.zero
        q = L.QuantizedKV(self.packed, scale, zero, self.head_dim)
        out = L.dequantize_kv(q, lay, dtype=dtype)
        if self.outlier_idx.numel():
            tok_major = out.permute(0, 2, 1, 3).contiguous()
            tok_major.view(-1)[self.outlier_idx.long()] = self.outlier_val.to(dtype)
            out = tok_major.permute(0, 2, 1, 3)
        return out

    # ---------------------------------------------------------------- append
    def append(self, x: torch.Tensor) -> None:
        """Add ``[1, H, t, D]`` new states; quantize whatever the rule says is due."""
        t = x.shape[2]
        if t == 0:
            return
        res = torch.cat([self.residual, x.to(self.store_dtype)], dim=2)
        self.n_tokens += t
        if self.spec.rule == "fixed_range":
            due = res.shape[2]
        else:
            due = res.shape[2] - self.spec.n_fp16(self.n_tokens)
        if due > 0:
            self._quantize(res[:, :, :due])
        # clone: a slice would keep the whole concatenated storage alive
        self.residual = res[:, :, due:].clone()

    def _quantize(self, x: torch.Tensor) -> None:
        lay = self.spec.layout
        self.tokens_sent_to_quantizer += x.shape[2]
        if self.spec.rule == "fixed_range":
            q = self._quantize_fixed(x)
            self.scale, self.zero = q.scale, q.zero
        else:
            q = L.quantize_kv(x, lay)
            self.scale = q.scale if self.scale is None else torch.cat([self.scale, q.scale], dim=2)
            self.zero = q.zero if self.zero is None else torch.cat([self.zero, q.zero], dim=2)
        self.packed = torch.cat([self.packed, q.packed], dim=2)
        self.n_quantized += x.shape[2]

    def _quantize_fixed(self, x: torch.Tensor) -> L.QuantizedKV:
        lay, frac = self.spec.layout, self.spec.outlier_frac
        hd = self.heads * self.head_dim
        if self.n_first is None:
            # The prompt: one range over the whole [H, T, D] of this sample (of its inliers).
            self.n_first = x.shape[2]
            if frac > 0:
                idx, val, lo, hi = L.split_outliers(x.permute(0, 2, 1, 3), frac)  # token-major
                self._add_outliers(idx[0], val[0])
                scale, zero = L.range_params(lo, hi, lay.bits)
                return L.quantize_kv_with(x, lay, scale, zero)
            return L.quantize_kv(x, lay)
        # Later tokens: the range is fixed; each token keeps its own share of outliers.
        if frac > 0:
            per_token = x.permute(2, 0, 1, 3)  # [t, 1, H, D]: one "sample" per token
            idx, val, _, _ = L.split_outliers(per_token, frac)
            offs = (self.n_quantized + torch.arange(x.shape[2], device=x.device)).unsqueeze(1) * hd
            self._add_outliers((idx + offs).reshape(-1), val.reshape(-1))
        return L.quantize_kv_with(x, lay, self.scale, self.zero)

    def _add_outliers(self, idx: torch.Tensor, val: torch.Tensor) -> None:
        self.outlier_idx = torch.cat([self.outlier_idx, idx.to(L.INDEX_DTYPE)])
        self.outlier_val = torch.cat([self.outlier_val, val.to(L.PARAM_DTYPE)])

    # ---------------------------------------------------------------- bytes
    def nbytes(self) -> int:
        """Bytes this stream's tensors hold (measured from their storages)."""
        return sum(_storage_bytes(t) for t in (self.packed, self.scale, self.zero, self.residual, self.outlier_idx, self.outlier_val))


class QuantizedKVLayer(BaseQuantizedLayer):
    """One decoder layer's quantized keys and values, stored per sample (see the module doc).

    ``pad_lengths``: left-pad tokens of each row of the batch (never stored, never counted).
    ``byte_log[row][k]`` = (real tokens, measured bytes) after the row's ``k+1``-th update:
    ``k = 0`` is the prompt, ``k`` the prompt plus ``k`` decoded entries.
    """

    is_croppable = False  # quantized states cannot be un-quantized back into a rollback

    def __init__(
        self,
        key_spec: StreamSpec,
        value_spec: StreamSpec,
        pad_lengths: list[int] | None = None,
        store_dtype: torch.dtype = torch.float16,
        attend_quantized: bool = False,
    ) -> None:
        super().__init__()
        self.key_spec, self.value_spec = key_spec, value_spec
        self.attend_quantized = attend_quantized
        self.pad_lengths = list(pad_lengths) if pad_lengths is not None else None
        self.store_dtype = store_dtype
        self.k_rows: list[KVStream] = []
        self.v_rows: list[KVStream] = []
        self._pads_left: list[int] = []
        # per row: [(real tokens, measured bytes of keys+values)] after every update
        self.byte_log: list[list[tuple[int, int]]] = []

    def set_leading_padding(self, pad_lengths: list[int]) -> None:
        """Leading slots of each row of the FIRST states this layer will receive that are not
        real tokens (left padding, or the spare slots of an evicted or pruned row)."""
        if self.is_initialized:
            raise RuntimeError("the leading padding of a layer is fixed once its first states are stored")
        self.pad_lengths = [int(p) for p in pad_lengths]

    def _quantize(self, tensor):  # noqa: D401 - the streams quantize; required by the base class
        raise NotImplementedError("QuantizedKVLayer quantizes per sample in KVStream")

    def _dequantize(self, q_tensor):
        raise NotImplementedError("QuantizedKVLayer dequantizes per sample in KVStream")

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        b, h, _, d = key_states.shape
        for spec, width, what in ((self.key_spec, d, "keys"), (self.value_spec, value_states.shape[-1], "values")):
            lay = spec.layout
            if lay.kind == "token" and (lay.group > width or width % lay.group):
                raise ConfigError(f"{what}: a per-token group of {lay.group} channels does not fit head_dim={width}; choose a group that divides {width}")
        pads = self.pad_lengths if self.pad_lengths is not None else [0] * b
        if len(pads) != b:
            raise ValueError(f"pad_lengths has {len(pads)} rows but the states have batch size {b}")
        self._pads_left = list(pads)
        dev = key_states.device
        self.k_rows = [KVStream(self.key_spec, h, d, dev, self.store_dtype) for _ in range(b)]
        self.v_rows = [KVStream(self.value_spec, value_states.shape[1], value_states.shape[-1], dev, self.store_dtype) for _ in range(b)]
        self.byte_log = [[] for _ in range(b)]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        b, h, t, d = key_states.shape
        self.cumulative_length += t
        total = self.cumulative_length
        dtype = key_states.dtype
        keys = key_states.new_zeros(b, h, total, d)
        values = value_states.new_zeros(b, value_states.shape[1], total, value_states.shape[-1])
        for row in range(b):
            skip = min(self._pads_left[row], t)
            self._pads_left[row] -= skip
            k_new, v_new = key_states[row : row + 1, :, skip:], value_states[row : row + 1, :, skip:]
            ks, vs = self.k_rows[row], self.v_rows[row]
            if self.attend_quantized:  # attention reads exactly what the cache holds
                ks.append(k_new)
                vs.append(v_new)
                k_all, v_all = ks.read(dtype), vs.read(value_states.dtype)
            else:  # KIVI: the stored past, then this call's states at full precision
                k_all = torch.cat([ks.read(dtype), k_new], dim=2)
                v_all = torch.cat([vs.read(value_states.dtype), v_new], dim=2)
                ks.append(k_new)
                vs.append(v_new)
            n = k_all.shape[2]
            if n:
                keys[row, :, total - n :] = k_all[0]
                values[row, :, total - n :] = v_all[0]
            self.byte_log[row].append((ks.n_tokens, ks.nbytes() + vs.nbytes()))
        return keys, values

    # ---------------------------------------------------------------- batch edits (exact: no re-quantization)
    def _select(self, rows: list[int]) -> None:
        self.k_rows = [copy.copy(self.k_rows[i]) for i in rows]
        self.v_rows = [copy.copy(self.v_rows[i]) for i in rows]
        self._pads_left = [self._pads_left[i] for i in rows]
        self.byte_log = [list(self.byte_log[i]) for i in rows]
        if self.pad_lengths is not None:
            self.pad_lengths = [self.pad_lengths[i] for i in rows]

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.is_initialized:
            self._select([int(i) for i in beam_idx.tolist()])

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self._select([int(i) for i in torch.as_tensor(indices).reshape(-1).tolist()])

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized:
            self._select([i for i in range(len(self.k_rows)) for _ in range(repeats)])

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("a quantized KV cache cannot be cropped (assisted decoding is not supported)")

    def reset(self) -> None:
        super().reset()
        self.k_rows, self.v_rows, self.byte_log, self._pads_left = [], [], [], []

    # ---------------------------------------------------------------- bytes
    def record_at(self, row: int, decoded: int | None) -> tuple[int, int]:
        """(real tokens, measured bytes) of ``row`` once it held its prompt and ``decoded``
        generated entries (now, when ``decoded`` is None)."""
        log_row = self.byte_log[row]
        if not log_row:
            return 0, 0
        if decoded is None:
            return log_row[-1]
        if not 0 <= decoded < len(log_row):
            log.warning("no byte record of row %d after %d decoded entries (recorded 0..%d); using the latest", row, decoded, len(log_row) - 1)
            return log_row[-1]
        return log_row[decoded]


class QuantizedKVCache(Cache):
    """A ``Cache`` with one :class:`QuantizedKVLayer` per decoder layer; a
    :class:`~vlmcompress.footprint.PerSampleKVCache`.

    Its :meth:`footprint` reads each layer's byte log at the point where each sample would
    have stopped had it run alone (a batch keeps feeding tokens to a sample after its
    end-of-sequence token), whatever number of prompt tokens the layer kept (eviction may
    keep a different number per layer and per sample).
    """

    def __init__(self, num_layers: int, key_spec: StreamSpec, value_spec: StreamSpec, **layer_options) -> None:
        """``layer_options``: the keyword arguments of :class:`QuantizedKVLayer`
        (``pad_lengths``, ``store_dtype``, ``attend_quantized``), the same for every layer."""
        layers = [QuantizedKVLayer(key_spec, value_spec, **layer_options) for _ in range(num_layers)]
        super().__init__(layers=layers)
        self.key_spec, self.value_spec = key_spec, value_spec

    def set_leading_padding(self, layer_idx: int, pad_lengths: list[int]) -> None:
        """Leading non-token slots of each row in the first states ``layer_idx`` receives
        (see :meth:`QuantizedKVLayer.set_leading_padding`)."""
        self.layers[layer_idx].set_leading_padding(pad_lengths)

    def _live_layers(self) -> list[QuantizedKVLayer]:
        return [layer for layer in self.layers if layer.is_initialized]

    def footprint(self, decode_entries: list[int] | None = None) -> list[dict]:
        """Per sample, after its prompt and ``decode_entries[i]`` decoded entries (now, when
        None): measured bytes (codes, scales, zeros, outliers, fp16 residual), the analytic
        bytes with the same overheads, the fp16 ``DynamicCache`` bytes of the same tokens,
        and the tokens held per layer (the mean over layers when they differ)."""
        layers = self._live_layers()
        if not layers:
            return []
        out = []
        for r in range(len(layers[0].k_rows)):
            recs = [layer.record_at(r, None if decode_entries is None else decode_entries[r]) for layer in layers]
            analytic = fp16 = 0
            for layer, (n, _) in zip(layers, recs):
                for s in (layer.k_rows[r], layer.v_rows[r]):
                    analytic += analytic_bytes(s.spec, s.heads, s.head_dim, n, s.n_first, s.residual.element_size())
                    fp16 += fp16_bytes(s.heads, s.head_dim, n)
            tokens = [n for n, _ in recs]
            kv_tokens = tokens[0] if len(set(tokens)) == 1 else sum(tokens) / len(tokens)
            out.append({"kv_bytes": sum(b for _, b in recs), "kv_bytes_analytic": analytic, "kv_bytes_fp16": fp16, "kv_tokens": kv_tokens})
        return out
