"""Which Linear layers a weight method compresses.

A ``targets`` knob is a ``+``-separated list of parts and name patterns:

- ``decoder``   every Linear inside the language model's decoder blocks (the default);
- ``vision``    every Linear of the vision tower (opt-in: vision encoders are small and
                sensitive, and the papers compress the LLM only);
- ``projector`` every Linear of the vision-to-language projector (opt-in);
- ``lm_head``   the output head (opt-in: it is often tied to the embeddings);
- anything else is a regular expression searched in the module's full name
  (e.g. ``mlp`` or ``layers\\.0\\.``), restricted to Linear layers.

Embeddings are never Linear layers, so they are never selected.  Works through the
model adapter, so every family the project supports is covered.
"""

from __future__ import annotations

import re

from torch import nn

from ...errors import ConfigError
from ...models.base import ModelAdapter

PARTS = ("decoder", "vision", "projector", "lm_head")


def parse_targets(spec: str) -> list[str]:
    items = [t.strip() for t in str(spec).replace("|", "+").split("+") if t.strip()]
    if not items:
        raise ConfigError(f"targets={spec!r} is empty; allowed: {', '.join(PARTS)} or a regex on module names, joined by '+'")
    for t in items:
        if t not in PARTS:
            try:
                re.compile(t)
            except re.error as exc:
                raise ConfigError(f"targets: {t!r} is neither a part ({', '.join(PARTS)}) nor a valid regex: {exc}") from None
    return items


def _names_under(model: nn.Module, part: nn.Module) -> set[str]:
    ids = {id(m) for m in part.modules()}
    return {name for name, m in model.named_modules() if id(m) in ids and isinstance(m, nn.Linear)}


def select_linears(model: nn.Module, adapter: ModelAdapter, spec: str) -> dict[str, nn.Linear]:
    """``{full module name: Linear}`` chosen by ``spec``, in module order."""
    items = parse_targets(spec)
    chosen: set[str] = set()
    for t in items:
        if t == "decoder":
            chosen |= _names_under(model, adapter.decoder_layers)
        elif t == "vision":
            chosen |= _names_under(model, adapter.vision_tower)
        elif t == "projector":
            chosen |= _names_under(model, adapter.projector)
        elif t == "lm_head":
            head = adapter.lm_head
            chosen |= {name for name, m in model.named_modules() if m is head}
        else:
            pat = re.compile(t)
            matched = {name for name, m in model.named_modules() if isinstance(m, nn.Linear) and pat.search(name)}
            if not matched:
                raise ConfigError(f"targets: {t!r} matches no Linear layer of {type(model).__name__} (e.g. {_example_linear(model)!r})")
            chosen |= matched
    if not chosen:
        raise ConfigError(f"targets={spec!r} selects no Linear layer in {type(model).__name__}")
    return {name: m for name, m in model.named_modules() if name in chosen and isinstance(m, nn.Linear)}


def _example_linear(model: nn.Module) -> str:
    return next((name for name, m in model.named_modules() if isinstance(m, nn.Linear)), "")


def block_index_of(model: nn.Module, adapter: ModelAdapter) -> dict[str, int]:
    """``{Linear name: decoder block index}`` for every Linear inside a decoder block."""
    out: dict[str, int] = {}
    layer_ids = {id(layer): i for i, layer in enumerate(adapter.decoder_layers)}
    for name, module in model.named_modules():
        if id(module) in layer_ids:
            i = layer_ids[id(module)]
            for sub, m in module.named_modules():
                if isinstance(m, nn.Linear):
                    out[f"{name}.{sub}" if sub else name] = i
    return out


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted ``name`` by ``new``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
