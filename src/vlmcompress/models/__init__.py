"""Model adapters, one per family; importing this package registers them."""

from . import internvl, llava, qwen2_vl  # noqa: F401  (registration)
from .base import ADAPTERS, METHOD_FAMILIES, ModelAdapter, find_module
from .loading import EMBEDDED_NAME, EMBEDDED_PATH, LoadedModel, load_model

__all__ = ["ADAPTERS", "EMBEDDED_NAME", "EMBEDDED_PATH", "LoadedModel", "METHOD_FAMILIES", "ModelAdapter", "find_module", "load_model"]
