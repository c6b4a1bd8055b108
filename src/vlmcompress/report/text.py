"""Making any string safe to put in a report: control characters shown as ``\\xNN``,
lone surrogates (which no UTF-8 file can hold) replaced, huge strings cut."""

from __future__ import annotations

import re
from typing import Any

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def clean(value: Any, limit: int | None = None, newlines: bool = False) -> str:
    """``str(value)`` with control characters made visible (``\\x07``), lone surrogates
    replaced by U+FFFD, tabs (and newlines unless ``newlines``) turned into spaces, and
    cut to ``limit`` characters with an ellipsis."""
    text = value if isinstance(value, str) else str(value)
    if limit is not None and len(text) > limit:
        text = text[: max(0, limit - 1)] + "…"
    text = _SURROGATE.sub("\ufffd", text)
    text = text.replace("\t", " ").replace("\r\n", "\n").replace("\r", "\n")
    if not newlines:
        text = text.replace("\n", " ")
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
