"""Parse and build compression settings.

A setting is written ``none`` (the baseline) or as methods joined by ``+``, each
``name`` or ``name(knob=value, ...)``, e.g. ``rtn(bits=4,group_size=64)+kivi(bits=2)``.
In YAML a setting may also be a list of mappings ``[{rtn: {bits: 4}}, {kivi: {bits: 2}}]``.
Knob values are converted to the knob's annotated type; unknown methods and knobs are
refused with the list of known ones.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import ConfigError
from .base import HOOK_POINTS, METHODS, CompressionMethod

BASELINE = "none"
_CALL = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\((.*)\))?\s*$", re.S)

# Size and depth limits: a spec longer than this, a stack of more methods or a method with
# more knobs is refused at once, with one line quoting at most its start (a setting pasted
# thousands of times would otherwise be built and checked method by method).
MAX_SPEC_CHARS = 1000
MAX_METHODS = 16  # per setting; no composable stack comes near (one method per family)
MAX_KNOBS = 32  # per method
_SCALARS = (str, int, float, bool, type(None))


def short(value: Any, limit: int = 80) -> str:
    """``repr(value)`` on one line, cut to ``limit`` characters (error messages quote
    user input with it, so a huge or multi-line input stays a one-line message)."""
    text = repr(value) if not isinstance(value, str) or len(value) <= 4 * limit else repr(value[: 4 * limit])
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class Setting:
    """One compression setting: the user's spec string and the built methods."""

    spec: str  # exactly as the user gave it
    methods: list[CompressionMethod]

    @property
    def is_baseline(self) -> bool:
        return not self.methods

    @property
    def normalized(self) -> str:
        return "+".join(m.spec() for m in self.methods) or BASELINE

    def ordered(self) -> list[CompressionMethod]:
        """Methods in hook order (weights → vision → attention → kv_cache)."""
        return sorted(self.methods, key=lambda m: HOOK_POINTS.index(m.hook))


def _split_top_level(text: str, sep: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise ConfigError(f"malformed compression spec {short(text)}: unbalanced ')'")
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise ConfigError(f"malformed compression spec {short(text)}: unbalanced '('")
    parts.append(text[start:])
    return parts


def _parse_scalar(raw: str) -> Any:
    raw = raw.strip()
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        return raw[1:-1]
    low = raw.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for conv in (int, float):
        try:
            return conv(raw)
        except ValueError:
            pass
    return raw


def parse_spec(spec: str) -> list[tuple[str, dict[str, Any]]]:
    """``"a(x=1)+b"`` -> ``[("a", {"x": 1}), ("b", {})]`` (names and raw values only)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"malformed compression spec {short(spec)}: empty")
    if len(spec) > MAX_SPEC_CHARS:
        raise ConfigError(f"compression spec {short(spec, 60)} is {len(spec)} characters long; the limit is {MAX_SPEC_CHARS}")
    if spec.strip() == BASELINE:
        return []
    parts = _split_top_level(spec, "+")
    if len(parts) > MAX_METHODS:
        raise ConfigError(f"compression spec {short(spec, 60)} stacks {len(parts)} methods; a setting holds at most {MAX_METHODS}")
    out = []
    for part in parts:
        m = _CALL.match(part)
        if not m:
            raise ConfigError(f"malformed compression spec {short(spec)}: cannot read {short(part.strip())} (expected name or name(knob=value,...))")
        name, args = m.group(1), m.group(2)
        knobs: dict[str, Any] = {}
        if args and args.strip():
            items = _split_top_level(args, ",")
            if len(items) > MAX_KNOBS:
                raise ConfigError(f"compression spec {short(spec, 60)}: {name}(...) has {len(items)} knobs; at most {MAX_KNOBS}")
            for item in items:
                if "=" not in item:
                    raise ConfigError(f"malformed compression spec {short(spec)}: {short(item.strip())} in {name}(...) is not knob=value")
                key, value = item.split("=", 1)
                key = key.strip()
                if key in knobs:
                    raise ConfigError(f"malformed compression spec {short(spec)}: knob {short(key)} given twice to {name}")
                knobs[key] = _parse_scalar(value)
        out.append((name, knobs))
    return out


def _coerce(method: str, knob: str, value: Any, annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{method}: {knob}={short(value)} is not allowed; allowed: {', '.join(map(str, args))}")
        return value
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(method, knob, value, a)
            except ConfigError:
                continue
        raise ConfigError(f"{method}: {knob}={short(value)} has the wrong type (expected {annotation})")
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{method}: {knob}={short(value)} must be true or false")
    if annotation is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"{method}: {knob}={short(value)} must be an integer")
        return int(value)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{method}: {knob}={short(value)} must be a number")
        if not math.isfinite(value):  # NaN passes every range check: refuse it (and ±inf) here
            raise ConfigError(f"{method}: {knob}={short(value)} must be a finite number")
        return float(value)
    if annotation is str:
        return str(value)
    return value


def build_method(name: str, knobs: dict[str, Any]) -> CompressionMethod:
    cls = METHODS.get(name)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if len(knobs) > MAX_KNOBS:
        raise ConfigError(f"{name}: {len(knobs)} knobs given; at most {MAX_KNOBS}")
    unknown = sorted(set(map(str, knobs)) - set(fields))
    if unknown:
        shown = ", ".join(short(k, 40) for k in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise ConfigError(f"{name}: unknown knob {shown}; known: {', '.join(fields) or '(none)'}")
    for k, v in knobs.items():
        if not isinstance(v, _SCALARS):  # a depth limit too: knob values never nest
            raise ConfigError(f"{name}: {k}={short(v)} must be a single value (a number, a string, true/false or null), not a {type(v).__name__}")
    values = {k: _coerce(name, k, v, hints[k]) for k, v in knobs.items()}
    method = cls(**values)
    method.validate()
    return method


# Families that cannot share a setting whatever their members (the bytes of a layer that
# is both pruned and quantized would be counted twice, as pruned and as quantized).
_FAMILY_CONFLICTS = {
    frozenset({"weight_quantization", "weight_pruning"}): "a layer cannot be both quantized and pruned in one setting: its bytes cannot be counted as either",
}


def check_stack(methods: list[CompressionMethod], text: str) -> None:
    """Refuse, before any work, a stack whose methods cannot compose (one line naming them)."""
    names = [m.name for m in methods]
    for name in dict.fromkeys(names):
        if names.count(name) > 1:
            raise ConfigError(f"setting {short(text, 120)}: {name} appears twice; a method is applied once per setting")
    by_family: dict[str, list[str]] = {}
    for m in methods:
        if m.family is not None:
            by_family.setdefault(m.family, []).append(m.name)
    for family, members in by_family.items():
        if len(members) > 1:
            raise ConfigError(f"setting {short(text, 120)}: {' and '.join(members)} are both {family.replace('_', ' ')} methods; stack at most one")
    for pair, why in _FAMILY_CONFLICTS.items():
        if pair <= set(by_family):
            a, b = sorted(pair)
            raise ConfigError(f"setting {short(text, 120)}: {by_family[a][0]} + {by_family[b][0]}: {why}")
    for m in methods:
        for family, why in m.refuses.items():
            if family in by_family:
                raise ConfigError(f"setting {short(text, 120)}: {m.name} + {by_family[family][0]}: {why}")


def build_setting(spec: str | list | dict) -> Setting:
    """A setting from a spec string, or from YAML's list of ``{name: {knobs}}`` mappings."""
    if isinstance(spec, str):
        parsed = parse_spec(spec)
        text = spec
    else:
        if not isinstance(spec, (list, dict)):
            raise ConfigError(f"compression setting {short(spec)} must be a spec string or a list of {{method: {{knob: value}}}} mappings")
        items = spec if isinstance(spec, list) else [spec]
        if len(items) > MAX_METHODS:
            raise ConfigError(f"compression setting {short(spec, 60)} stacks {len(items)} entries; a setting holds at most {MAX_METHODS}")
        parsed = []
        for item in items:
            if isinstance(item, str):
                parsed.extend(parse_spec(item))
            elif isinstance(item, dict) and len(item) == 1:
                (name, knobs), = item.items()
                if not isinstance(name, str):
                    raise ConfigError(f"compression entry {short(item)}: the method name must be a string")
                if knobs is not None and not isinstance(knobs, dict):
                    raise ConfigError(f"compression entry {short(item)}: knobs of {name} must be a mapping")
                parsed.append((name, dict(knobs or {})))
            else:
                raise ConfigError(f"compression entry {short(item)} must be a spec string or a one-key mapping {{method: {{knob: value}}}}")
            if len(parsed) > MAX_METHODS:
                raise ConfigError(f"compression setting {short(spec, 60)} stacks more than {MAX_METHODS} methods")
        methods = [build_method(n, k) for n, k in parsed]
        text = "+".join(m.spec() for m in methods) or BASELINE
        check_stack(methods, text)
        return Setting(text, methods)
    methods = [build_method(n, k) for n, k in parsed]
    check_stack(methods, text)
    return Setting(text, methods)
