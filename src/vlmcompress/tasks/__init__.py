"""Tasks registered by name; importing this package registers the built-in ones."""

from . import counterfactual_bias, synthetic  # noqa: F401  (registration)
from .lmms import task as _lmms_task  # noqa: F401  (registration of the real benchmarks)
from .base import TASKS, Sample, Task
from .synthetic import SYNTHETIC_SUITE

__all__ = ["SYNTHETIC_SUITE", "TASKS", "Sample", "Task"]
