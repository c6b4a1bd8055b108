"""The compression hook point: what every method is, and the context it acts in.

A method is a dataclass whose fields are its knobs (typed, documented, validated) and
whose class says at which hook point it acts:

- ``weights``:  changes the model's Linear weights once per setting (``prepare``), may
  ask the context for calibration batches;
- ``kv_cache``: supplies the cache object generation writes keys and values into
  (``make_cache``);
- ``attention``: scores and evicts cache entries at the end of prefill, or drops tokens
  inside the decoder (installs hooks in ``prepare``, removes them in ``remove``);
- ``vision``: prunes or merges visual tokens before the projector.

A setting is a stack of methods (``rtn(bits=4)+kivi(bits=2)``): they are prepared in the
order weights → vision → attention → kv_cache, whatever the order written.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from ..errors import ConfigError
from ..registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from ..models.base import ModelAdapter

HOOK_POINTS = ("weights", "vision", "attention", "kv_cache")

def _check_hook(cls: type["CompressionMethod"]) -> None:
    if cls.hook not in HOOK_POINTS:
        raise ValueError(f"{cls.__name__}.hook must be one of {HOOK_POINTS}")


METHODS: Registry[type["CompressionMethod"]] = Registry("method", check=_check_hook)


class CalibrationData(Protocol):
    """Where calibration-based weight methods get their inputs from."""

    def batches(self) -> list[dict]:
        """Model-input batches (on the model's device) of the calibration samples."""

    def describe(self) -> dict[str, Any]:
        """What a result records about them (task, seed, samples requested)."""


@dataclass
class CompressionContext:
    """What a method may touch: the model and its adapter, calibration data on demand,
    and a place to report figures that end up in the cell's ``efficiency``."""

    model: Any
    adapter: "ModelAdapter"
    processor: Any
    calibration: CalibrationData | None = None  # inputs of calibration-based weight methods
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class CompressionMethod:
    """Base of every method.  Subclasses are dataclasses: one field per knob, with a
    default, a type annotation and a comment saying what it does."""

    name: ClassVar[str] = ""
    hook: ClassVar[str] = ""
    # Methods of one family cannot share a setting (two caches, two evictions, two vision
    # pruners, two weight quantizers or pruners); ``None``: no such family.
    family: ClassVar[str | None] = None
    # Families this method cannot be stacked with, and why (one line).
    refuses: ClassVar[dict[str, str]] = {}

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the knob when a value is out of range."""

    def check_model(self, ctx: CompressionContext) -> None:
        """Raise :class:`ConfigError` when a knob does not fit the loaded model (a group size
        that does not divide a layer, a layer index beyond the decoder, an unsupported
        family), without changing anything; run for every setting before the baseline."""

    def prepare(self, ctx: CompressionContext) -> None:
        """Once per setting, after the model is loaded."""

    def make_cache(self, ctx: CompressionContext, batch: dict) -> Any | None:
        """``kv_cache`` methods: the cache generation should write into for ``batch``."""
        return None

    def after_generate(self, ctx: CompressionContext, batch: dict, cache: Any) -> list[dict[str, Any]] | None:
        """Per-sample figures of this batch (e.g. tokens kept), or ``None``."""
        return None

    def prompt_entries_held(self) -> list[list[float]] | None:
        """After a batch: ``[row][layer]`` prompt entries each layer's cache held, when this
        method changed them (eviction, token dropping); ``None`` otherwise.  The KV bytes
        are counted from it in one place (:func:`vlmcompress.footprint.kv_footprint`)."""
        return None

    def remove(self, ctx: CompressionContext) -> None:
        """Undo hooks installed in ``prepare`` (weights changes are not undone: the runner reloads)."""

    # ------------------------------------------------------------- helpers for validate

    def knobs(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def spec(self) -> str:
        """Normalised spec string: every knob spelled out, in field order."""
        inner = ",".join(f"{k}={_format_value(v)}" for k, v in self.knobs().items())
        return f"{self.name}({inner})"

    def check_choice(self, knob: str, allowed) -> None:
        value = getattr(self, knob)
        if value not in allowed:
            raise ConfigError(f"{self.name}: {knob}={value!r} is not allowed; allowed: {', '.join(map(str, allowed))}")

    def check_range(self, knob: str, low=None, high=None, *, low_open=False, high_open=False) -> None:
        value = getattr(self, knob)
        bad = (low is not None and (value <= low if low_open else value < low)) or (
            high is not None and (value >= high if high_open else value > high)
        )
        if bad:
            lo = "(" if low_open else "["
            hi = ")" if high_open else "]"
            raise ConfigError(f"{self.name}: {knob}={value!r} is out of range {lo}{low}, {high}{hi}")


def _format_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "none"
    return str(v)
