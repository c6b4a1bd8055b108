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

Speed: stored per sample, but not processed per sample.  Rows in the same state (equal token
counts: every row of a batch without padding, at every step) are read back with one
dequantization and quantized with one call per group (:func:`read_streams_into`,
:func:`append_streams`), written straight into the buffer attention reads
(:func:`~.layouts.dequantize_kv_into`: three passes over the tokens, bit for bit the
reference read-back).  ``fixed_range`` streams (kv_uniform / kv_outlier) keep a per-row
path.  ``benchmarks/kv_quant.py`` times a decode step against transformers' ``QuantizedCache``.

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

    # ---------------------------------------------------------------- append
    def append(self, x: torch.Tensor) -> None:
        """Add ``[1, H, t, D]`` new states; quantize whatever the rule says is due."""
        if self.spec.rule != "fixed_range":
            append_streams([self], x)
            return
        t = x.shape[2]
        if t == 0:
            return
        self.n_tokens += t
        self._quantize(torch.cat([self.residual, x.to(self.store_dtype)], dim=2))
        self.residual = self.residual.new_empty(1, self.heads, 0, self.head_dim)  # a fixed range quantizes every token at once

    def _quantize(self, x: torch.Tensor) -> None:
        """``fixed_range``: quantize all of ``x`` against the sample's range (set by its first chunk)."""
        self.tokens_sent_to_quantizer += x.shape[2]
        q = self._quantize_fixed(x)
        self.scale, self.zero = q.scale, q.zero
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


def _stacked(tensors: list[torch.Tensor]) -> torch.Tensor:
    """One row: the tensor itself; several: one batch along dim 0 (codes, parameters and fp16
    residuals are small next to the float tensor they are read back into)."""
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=0)


def read_streams_into(streams: list[KVStream], out: torch.Tensor) -> torch.Tensor:
    """Read back ``G`` streams in the same state (one spec, equal token and quantized counts:
    the rows of a batch without padding, at every decode step) into ``out`` ``[G, H, n, D]``
    with one dequantization for the group, not one per row."""
    first = streams[0]
    nq = first.n_quantized
    if nq:
        q = L.QuantizedKV(_stacked([s.packed for s in streams]), _stacked([s.scale for s in streams]), _stacked([s.zero for s in streams]), first.head_dim)
        past = out[:, :, :nq]
        L.dequantize_kv_into(q, first.spec.layout, past)
        for g, s in enumerate(streams):
            if s.outlier_idx.numel():  # token-major flat index into [nq, H, D]
                idx = s.outlier_idx.long()
                per_token = s.heads * s.head_dim
                tok, rest = idx // per_token, idx % per_token
                past[g].index_put_((rest // s.head_dim, tok, rest % s.head_dim), s.outlier_val.to(out.dtype))
    out[:, :, nq:].copy_(_stacked([s.residual for s in streams]))
    return out


def append_streams(streams: list[KVStream], x: torch.Tensor) -> None:
    """Add ``x`` ``[G, H, t, D]`` to ``G`` streams in the same state under the ``block`` or
    ``window`` rule: the tokens that fall due are quantized in one call for the group (blocks
    never span two samples, so each row's codes and parameters are what it gets alone)."""
    t = x.shape[2]
    if t == 0:
        return
    first = streams[0]
    res = torch.cat([_stacked([s.residual for s in streams]), x.to(first.store_dtype)], dim=2)
    n_tokens = first.n_tokens + t
    due = res.shape[2] - first.spec.n_fp16(n_tokens)
    q = L.quantize_kv(res[:, :, :due], first.spec.layout) if due > 0 else None
    own = (lambda p: p.clone()) if len(streams) > 1 else (lambda p: p)  # a row must not keep the group's storage alive
    for g, s in enumerate(streams):
        s.n_tokens = n_tokens
        if q is not None:
            s.tokens_sent_to_quantizer += due
            scale, zero = q.scale[g : g + 1], q.zero[g : g + 1]
            s.scale = own(scale) if s.scale is None else torch.cat([s.scale, scale], dim=2)
            s.zero = own(zero) if s.zero is None else torch.cat([s.zero, zero], dim=2)
            s.packed = torch.cat([s.packed, q.packed[g : g + 1]], dim=2)
            s.n_quantized += due
        # clone: a slice would keep the whole concatenated storage alive
        s.residual = res[g : g + 1, :, due:].clone()


def _rows_slice(rows: list[int]) -> slice | None:
    """``rows`` as a slice of the batch when they are consecutive (then writes go straight
    into a view of attention's buffer), else None."""
    return slice(rows[0], rows[-1] + 1) if rows == list(range(rows[0], rows[-1] + 1)) else None


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
        # Every row is written right-aligned straight into the buffer attention reads; only the
        # slots in front of a row's first token (padding) are zeroed.  Rows in the same state
        # (equal token counts: a batch without padding, or rows whose padding is used up) are
        # read and appended as one group; ``fixed_range`` streams keep a per-row range and go
        # one row at a time.
        keys = key_states.new_empty(b, h, total, d)
        values = value_states.new_empty(b, value_states.shape[1], total, value_states.shape[-1])
        skips = [min(p, t) for p in self._pads_left]
        self._pads_left = [p - k for p, k in zip(self._pads_left, skips)]
        groups: dict[tuple, list[int]] = {}
        batchable = self.key_spec.rule != "fixed_range" and self.value_spec.rule != "fixed_range"
        for row in range(b):
            groups.setdefault((self.k_rows[row].n_tokens, skips[row]) if batchable else (row,), []).append(row)
        for rows in groups.values():
            self._update_rows(rows, skips[rows[0]], key_states, value_states, keys, values)
        for row in range(b):
            self.byte_log[row].append((self.k_rows[row].n_tokens, self.k_rows[row].nbytes() + self.v_rows[row].nbytes()))
        return keys, values

    def _update_rows(self, rows: list[int], skip: int, key_states, value_states, keys, values) -> None:
        """Store the new states of ``rows`` (same state, same leading padding ``skip``) and write
        what attention reads for them into ``keys``/``values``."""
        ks_rows, vs_rows = [self.k_rows[r] for r in rows], [self.v_rows[r] for r in rows]
        span = _rows_slice(rows)
        index = None if span is not None else torch.tensor(rows, device=keys.device)
        pick = (lambda x: x[span]) if span is not None else (lambda x: x.index_select(0, index))
        k_new, v_new = pick(key_states)[:, :, skip:], pick(value_states)[:, :, skip:]
        total, t_new = keys.shape[2], k_new.shape[2]

        def append() -> None:
            for streams, new in ((ks_rows, k_new), (vs_rows, v_new)):
                if len(streams) == 1:
                    streams[0].append(new)
                else:
                    append_streams(streams, new)

        if self.attend_quantized:  # attention reads exactly what the cache holds
            append()
            start, mid = total - ks_rows[0].n_tokens, total
        else:  # KIVI: the stored past, then this call's states at full precision
            start, mid = total - ks_rows[0].n_tokens - t_new, total - t_new
        for streams, buffer, new in ((ks_rows, keys, k_new), (vs_rows, values, v_new)):
            target = buffer[span] if span is not None else buffer.new_empty(len(rows), *buffer.shape[1:])
            read_streams_into(streams, target[:, :, start:mid])
            if mid < total:
                target[:, :, mid:].copy_(new)
            if start:
                target[:, :, :start].zero_()
            if span is None:
                buffer.index_copy_(0, index, target)
        if not self.attend_quantized:
            append()

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
