"""Compression methods, registered by name.

Importing this package imports every module under it (one file per method, grouped in
subpackages by family), so a new method is registered by adding its file.
"""

import importlib
import pkgutil

from .base import HOOK_POINTS, METHODS, CompressionContext, CompressionMethod
from .spec import BASELINE, Setting, build_setting, parse_spec


def _import_all() -> None:
    for info in pkgutil.walk_packages(__path__, prefix=__name__ + "."):
        importlib.import_module(info.name)


_import_all()

__all__ = [
    "BASELINE",
    "HOOK_POINTS",
    "METHODS",
    "CompressionContext",
    "CompressionMethod",
    "Setting",
    "build_setting",
    "parse_spec",
]
