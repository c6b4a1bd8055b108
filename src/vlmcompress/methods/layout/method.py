"""Base of every method that acts through the shared :class:`~.manager.SequenceLayout`
(KV-cache eviction and token dropping/pruning): acquire and release the shared hooks,
report per-sample figures and the entries each layer holds after generation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...errors import ConfigError
from ..base import CompressionContext, CompressionMethod
from . import accounting
from .flops import DecoderShape
from .manager import Participant, SequenceLayout
from .masks import SUPPORTED_ATTENTION


@dataclass
class LayoutMethod(CompressionMethod, Participant):
    """A method that changes which tokens the decoder or its cache holds."""

    def __post_init__(self) -> None:
        self._layout: SequenceLayout | None = None
        self._shape: DecoderShape | None = None

    def check_model(self, ctx: CompressionContext) -> None:
        impl = ctx.adapter.attention_implementation
        if impl not in SUPPORTED_ATTENTION:
            raise ConfigError(f"{self.name}: needs attention implementation one of {SUPPORTED_ATTENTION}; the model uses {impl!r}")
        for layer in ctx.adapter.decoder_layers:
            ctx.adapter.self_attention(layer)

    def prepare(self, ctx: CompressionContext) -> None:
        self._layout = SequenceLayout.acquire(ctx.model, ctx.adapter, self)
        self._shape = DecoderShape.from_adapter(ctx.adapter)
        try:
            self.setup(ctx)
        except BaseException:  # a refused setting must not leave the shared hooks behind
            self.remove(ctx)
            raise

    def setup(self, ctx: CompressionContext) -> None:
        """Method-specific checks and hooks once the model is known."""

    def remove(self, ctx: CompressionContext) -> None:
        self.teardown(ctx)
        if self._layout is not None:
            self._layout.release(self)
            self._layout = None

    def teardown(self, ctx: CompressionContext) -> None:
        """Undo :meth:`setup`."""

    def _last_batch(self):
        layout = self._layout
        return None if layout is None else layout.batch

    def prompt_entries_held(self) -> list[list[float]] | None:
        b = self._last_batch()
        return None if b is None else accounting.prompt_entries_held(b, len(self._layout.layers))

    def after_generate(self, ctx: CompressionContext, batch: dict, cache: Any) -> list[dict[str, Any]] | None:
        b = self._last_batch()
        return None if b is None else accounting.sample_stats(b, len(self._layout.layers), self._shape)
