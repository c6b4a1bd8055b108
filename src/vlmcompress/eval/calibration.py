"""Calibration inputs for the weight methods that need them: samples of a task, built
into model-input batches by the model's own adapter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..models.base import ModelAdapter
from ..tasks import TASKS


@dataclass
class CalibrationSource:
    """``samples`` samples of task ``task`` drawn with ``seed``, in batches of ``batch_size``."""

    task: str
    seed: int
    samples: int
    batch_size: int
    adapter: ModelAdapter
    device: torch.device
    data_dir: str | None = None  # local dataset copies (real benchmarks)

    def batches(self) -> list[dict]:
        task = TASKS.get(self.task)
        samples = [s for s in task.samples(self.seed, self.samples, self.data_dir) if s.error is None]
        out = []
        for i in range(0, len(samples), self.batch_size):
            chunk = samples[i : i + self.batch_size]
            batch = self.adapter.build_inputs([s.load_image() for s in chunk], [task.prompt(s) for s in chunk])
            out.append({k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
        return out

    def describe(self) -> dict[str, Any]:
        return {"calibration_task": self.task, "calibration_seed": self.seed, "calibration_samples_requested": self.samples}


@dataclass
class FixedBatches:
    """Calibration from model-input batches built elsewhere (a user's own data, a benchmark
    comparing with another library on the very same batches, tests): ``batches`` is the
    list, or a function that builds it when a method first asks (so unused data costs nothing)."""

    source: list[dict] | Callable[[], list[dict]]
    label: str = "fixed batches"

    def batches(self) -> list[dict]:
        return self.source() if callable(self.source) else self.source

    def describe(self) -> dict[str, Any]:
        return {"calibration_task": self.label}
