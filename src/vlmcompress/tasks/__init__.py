"""Tasks registered by name; importing this package registers the built-in ones."""

from . import synthetic  # noqa: F401  (registration)
from .base import TASKS, Sample, Task
from .synthetic import SYNTHETIC_SUITE

__all__ = ["SYNTHETIC_SUITE", "TASKS", "Sample", "Task"]
