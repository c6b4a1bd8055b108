"""How token dropping and eviction hook into a transformers (5.x) decoder, without
replacing any class and without touching the cache class generation uses.

One :class:`SequenceLayout` per model (reference-counted, shared by every method of a
setting that changes which cache slots are real) installs forward hooks only:

* a pre-hook on the top model notices a new prefill (the cache is empty) and starts a
  :class:`~.state.BatchLayout` from the batch's 2-D attention mask and image tokens;
* a pre-hook on every decoder layer
    - at prefill, drops tokens from the hidden sequence where a participant asks for
      it (FastV at layer K, vision-side pruners at layer 0), and hands the following
      layers the matching rotary ``position_embeddings`` (gathered from the model's own,
      so kept tokens keep their ORIGINAL positions), ``position_ids`` and a causal mask
      for the shorter sequence (:mod:`.masks`);
    - during decoding, replaces the shared attention mask by this layer's own: layers
      hold different numbers of entries (PyramidKV, FastV) and each batch row keeps its
      own number (budgets follow each sample's real length);
* a pre-hook on the attention modules (only where a participant scores) computes the
  queries it needs (:mod:`.queries`) and hands the attention a cache proxy for this one
  call (:mod:`.cache_write`).

Positions.  transformers 5.x ``generate`` carries ``position_ids`` in its own kwargs
(``position_ids[..., -1:] + 1`` each step, 3-D M-RoPE rows for Qwen2-VL) and never
derives them from the cache length, so decoded tokens keep their original positions
after the cache shrinks; keys in the cache already carry their rotary phase.
"""

from __future__ import annotations

import weakref

import torch

from ...errors import ConfigError
from ...footprint import tell_leading_padding
from .cache_write import PrefillCacheProxy, write_kept
from .fused import FUSED_ATTENTION, ColumnSumRequest, request_column_sums
from .masks import SUPPORTED_ATTENTION, decode_mask, prefill_mask
from .queries import compute_queries
from .state import BatchLayout, right_aligned_index


class Participant:
    """A method that acts through the layout.  Override what applies."""

    def query_tail(self, layer: int, layout: BatchLayout) -> int | None:
        """Trailing query slots to compute at ``layer`` (``S`` = all); ``None``: not this layer."""
        return None

    def on_prefill_kv(self, layer: int, layout: BatchLayout, attn, q_tail, keys, values):
        """Keys/values of ``layer`` at prefill.  Return ``(index [B,H,N], valid [B,N])`` of
        slots to store (or ``(index, valid, keys, values)`` when merging), or ``None`` to
        store everything."""
        return None

    def keep_before(self, layer: int, layout: BatchLayout) -> torch.Tensor | None:
        """Keep mask ``[B, S]`` over the hidden sequence before ``layer`` (prefill), or ``None``."""
        return None

    def finish_prefill(self, layout: BatchLayout, cache) -> None:
        """After the prefill forward (deferred selections, e.g. VL-Cache)."""

    def column_sum_chunk(self, layer: int, layout: BatchLayout) -> int | None:
        """Query chunk when this participant ranks ``layer``'s keys by the attention they
        receive from every prompt query (H2O): on an SDPA model those sums then come out of
        the prefill's own attention (``.fused``) and :meth:`on_prefill_column_sums` is called
        instead of :meth:`on_prefill_kv`.  ``None``: not this participant."""
        return None

    def on_prefill_column_sums(self, layer: int, layout: BatchLayout, attn, sums: list[torch.Tensor], keys, values):
        """As :meth:`on_prefill_kv`, given each row's column sums ``[H_q, L]`` instead of queries."""
        raise NotImplementedError


_MANAGERS: "weakref.WeakKeyDictionary[torch.nn.Module, SequenceLayout]" = weakref.WeakKeyDictionary()


class SequenceLayout:
    """Hooks shared by the token-dropping and cache-evicting methods of one model."""

    # whether an SDPA model's prefill computes column sums inside its attention (``.fused``);
    # off, the scorer recomputes them from the queries (eager models always do)
    fuse_column_sums: bool = True

    @classmethod
    def acquire(cls, model, adapter, participant: Participant) -> "SequenceLayout":
        mgr = _MANAGERS.get(model)
        if mgr is None:
            mgr = cls(model, adapter)
            _MANAGERS[model] = mgr
        mgr.add(participant)
        return mgr

    @classmethod
    def current(cls, model) -> "SequenceLayout | None":
        return _MANAGERS.get(model)

    def __init__(self, model, adapter):
        self.model = model
        self.adapter = adapter
        self.participants: list[Participant] = []
        self.handles: list = []
        self.batch: BatchLayout | None = None
        self.impl = adapter.attention_implementation
        if self.impl not in SUPPORTED_ATTENTION:
            raise ConfigError(
                f"token eviction/pruning needs attention implementation one of {SUPPORTED_ATTENTION}; the model uses {self.impl!r}"
            )
        self.layers = list(adapter.decoder_layers)
        self.kv_heads = adapter.text_kv_heads
        self.fused_prefill = False  # the text model runs ``FUSED_ATTENTION`` during this prefill

    # ------------------------------------------------------------ lifecycle
    def add(self, participant: Participant) -> None:
        self.participants.append(participant)
        if len(self.handles) == 0:
            self._install()

    def release(self, participant: Participant) -> None:
        self.participants = [p for p in self.participants if p is not participant]
        self._unfuse()
        if not self.participants:
            for h in self.handles:
                h.remove()
            self.handles.clear()
            _MANAGERS.pop(self.model, None)

    def _install(self) -> None:
        self.handles.append(self.model.register_forward_pre_hook(self._model_pre, with_kwargs=True))
        self.handles.append(self.model.register_forward_hook(self._model_post, with_kwargs=True))
        for i, layer in enumerate(self.layers):
            attn = self.adapter.self_attention(layer)
            self.handles.append(layer.register_forward_pre_hook(self._make_layer_pre(i), with_kwargs=True))
            self.handles.append(attn.register_forward_pre_hook(self._make_attn_pre(i), with_kwargs=True))

    # ------------------------------------------------------------ model-level
    def _model_pre(self, module, args, kwargs):
        cache = kwargs.get("past_key_values")
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if cache is None or input_ids is None:
            self.batch = None  # a forward outside cached generation: leave it alone
        elif cache.get_seq_length() == 0:
            self.batch = BatchLayout.start(input_ids, kwargs.get("attention_mask"), self.adapter.image_token_mask(input_ids))
            if self._fusable() and any(p.column_sum_chunk(i, self.batch) is not None for p in self.participants for i in range(len(self.layers))):
                # the text model's attention function for this prefill only (the mask is SDPA's)
                self.adapter.text_config._attn_implementation = FUSED_ATTENTION
                self.fused_prefill = True
        elif self.batch is not None:
            self.batch.prefill = False
        return None

    def _fusable(self) -> bool:
        """SDPA over plain causal attention in every layer: the fused function computes that
        and nothing else (no sliding window, no soft-capping)."""
        cfg = self.adapter.text_config
        layer_types = getattr(cfg, "layer_types", None) or ()
        return (
            self.fuse_column_sums and self.impl == "sdpa" and not getattr(cfg, "use_sliding_window", False)
            and all(t == "full_attention" for t in layer_types) and getattr(cfg, "attn_logit_softcapping", None) is None
        )

    def _unfuse(self) -> None:
        if self.fused_prefill:
            self.adapter.text_config._attn_implementation = self.impl
            self.fused_prefill = False

    def _model_post(self, module, args, kwargs, output):
        self._unfuse()
        b = self.batch
        if b is not None and b.prefill:
            cache = kwargs.get("past_key_values")
            for p in self.participants:
                p.finish_prefill(b, cache)
            b.prefill = False
        return None

    # ------------------------------------------------------------ decoder layers
    def _make_layer_pre(self, idx: int):
        def hook(module, args, kwargs):
            b = self.batch
            if b is None:
                return None
            if b.prefill:
                return self._prefill_layer(idx, args, kwargs)
            rec = b.layers.get(idx)
            if rec is None:
                return None
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            q_len = hidden.shape[1]
            appended = b.appended.get(idx, 0)
            kwargs["attention_mask"] = decode_mask(rec.valid, appended, q_len, self.impl, hidden.dtype)
            b.appended[idx] = appended + q_len
            return args, kwargs

        return hook

    def _prefill_layer(self, idx: int, args, kwargs):
        b = self.batch
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        keep = None
        for p in self.participants:
            k = p.keep_before(idx, b)
            if k is not None:
                keep = k if keep is None else keep & k
        if keep is not None:
            hidden = self._drop(idx, hidden, keep)
            if "hidden_states" in kwargs:
                kwargs["hidden_states"] = hidden
            else:
                args = (hidden,) + tuple(args[1:])
        if b.dropped:
            self._narrow_inputs(kwargs, hidden.dtype)
        b.seq_len_at[idx] = b.seq_valid.sum(-1).tolist()
        tell_leading_padding(kwargs.get("past_key_values"), idx, b.seq_valid)
        b.record_all(idx, self.kv_heads)  # an evictor's write narrows this record
        return args, kwargs

    def _drop(self, idx: int, hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Keep only the ``keep`` slots of the hidden sequence (right-aligned per row)."""
        b = self.batch
        keep = keep & b.seq_valid
        keep[:, -1] |= b.seq_valid[:, -1]  # the last token produces the next-token logits
        slot_index, valid = right_aligned_index(keep)
        b.seq_index = b.seq_index.gather(1, slot_index)
        b.seq_valid = valid
        b.dropped = True
        b.drops[idx] = keep
        return hidden.gather(1, slot_index[..., None].expand(-1, -1, hidden.shape[-1]))

    def _narrow_inputs(self, kwargs, dtype: torch.dtype) -> None:
        """Rotary ``cos``/``sin`` and ``position_ids`` at the kept slots' original positions,
        and the causal mask of the shorter sequence."""
        b = self.batch
        B, S = b.seq_index.shape
        cos, sin = kwargs["position_embeddings"]
        kwargs["position_embeddings"] = tuple(_gather_positions(t, b.seq_index) for t in (cos, sin))
        pos = kwargs.get("position_ids")
        if isinstance(pos, torch.Tensor) and pos.shape[-1] == b.prompt_mask.shape[1]:
            kwargs["position_ids"] = pos.expand(*pos.shape[:-2], B, pos.shape[-1]).gather(-1, b.seq_index.expand(*pos.shape[:-2], B, S))
        kwargs["attention_mask"] = prefill_mask(b.seq_valid, self.impl, dtype)

    # ------------------------------------------------------------ attention modules
    def _make_attn_pre(self, idx: int):
        def hook(module, args, kwargs):
            b = self.batch
            if b is None or not b.prefill:
                return None
            summers = [(p, c) for p in self.participants if self.fused_prefill and (c := p.column_sum_chunk(idx, b)) is not None]
            users = [(p, p.query_tail(idx, b)) for p in self.participants if all(p is not s for s, _ in summers)]
            users = [(p, t) for p, t in users if t is not None]
            cache = kwargs.get("past_key_values")
            if not (users or summers) or cache is None:
                return None
            if len(summers) > 1:
                raise ConfigError("two KV-eviction methods in one setting; stack at most one")
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            tail = min(hidden.shape[1], max((t for _, t in users), default=0))
            q_tail = None
            if tail > 0:
                q_tail = compute_queries(module, hidden, kwargs["position_embeddings"], tail, self.adapter.text_rotary(module))

            def on_update(real, keys, values, layer_idx, u_args, u_kwargs):
                chosen = None
                for p, _ in users:
                    res = p.on_prefill_kv(layer_idx, b, module, q_tail, keys, values)
                    if res is not None:
                        if chosen is not None or summers:
                            raise ConfigError("two KV-eviction methods in one setting; stack at most one")
                        chosen = res
                if summers:
                    # the write waits for the sums the attention call is about to compute
                    (summer, chunk), = summers

                    def on_sums(sums):
                        kept = summer.on_prefill_column_sums(layer_idx, b, module, sums, keys, values)
                        write_kept(real, b, layer_idx, kept, keys, values, u_args, u_kwargs)

                    request_column_sums(module, ColumnSumRequest(chunk, b.seq_valid.sum(-1).tolist(), on_sums))
                elif chosen is None:
                    real.update(keys, values, layer_idx, *u_args, **u_kwargs)
                else:
                    write_kept(real, b, layer_idx, chosen, keys, values, u_args, u_kwargs)
                return keys, values

            kwargs["past_key_values"] = PrefillCacheProxy(cache, on_update)
            return args, kwargs

        return hook


def _gather_positions(t: torch.Tensor, seq_index: torch.Tensor) -> torch.Tensor:
    """Gather rotary ``cos``/``sin`` ``[..., B or 1, T, D]`` at the kept slots' original positions."""
    B, S = seq_index.shape
    lead = t.shape[:-3]
    t = t.expand(*lead, B, t.shape[-2], t.shape[-1])
    idx = seq_index[..., None].expand(*lead, B, S, t.shape[-1])
    return t.gather(-2, idx)
