"""The lmms-eval tasks as registered :class:`~vlmcompress.tasks.base.Task` objects: samples
from the task's split (``doc_id`` = row index, the first ``limit`` rows as lmms-eval's
``--limit``), the prompt its declaration builds, scores from its ``process_results`` and
``aggregate``, and bootstrap intervals that respect the metric's groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..base import TASKS, Sample, Task
from ..scoring import normalize_answer
from .dataset import load_docs
from .normalize import clean_response
from .specs import LMMS_TASK_SPECS, LmmsTaskSpec, aggregate_all
from .units import resample_units, unit_index


@dataclass
class LmmsTask(Task):
    """One lmms-eval task (``spec`` says where its data live and how it is scored)."""

    spec: LmmsTaskSpec | None = None

    @classmethod
    def from_spec(cls, spec: LmmsTaskSpec) -> "LmmsTask":
        return cls(
            name=spec.name,
            description=f"{spec.dataset_id} ({spec.config or 'default'}/{spec.split}), as lmms-eval's {spec.name}",
            category="real benchmark",
            max_new_tokens=spec.max_new_tokens or 128,
            primary_metric=spec.primary_metric,
            spec=spec,
        )

    # ------------------------------------------------------------------ data
    def samples(self, seed: int, limit: int | None, data_dir: str | Path | None = None) -> list[Sample]:
        """The split's first ``limit`` rows in order (``seed`` plays no part: lmms-eval's order)."""
        spec = self.spec
        out = []
        for doc in load_docs(spec, data_dir, limit):
            row = doc.row
            columns = spec.images_of(row) if doc.error is None else []
            image = row.get(columns[0]) if columns else None
            error = doc.error
            if error is None and image is None:
                error = f"doc {doc.doc_id} shows no image"
            try:
                question, target = spec.doc_to_text(row), spec.doc_to_target(row)
            except Exception as exc:  # noqa: BLE001 - a malformed row is its own error
                question, target = "", ""
                error = error or f"doc {doc.doc_id} cannot be prompted: {type(exc).__name__}: {exc}"
            meta = {"doc_id": doc.doc_id}
            if len(columns) > 1:
                meta["images_shown"] = 1  # one image per prompt: the adapters' single-image template
                meta["images_in_doc"] = len(columns)
            text_doc = {k: v for k, v in row.items() if k not in spec.image_columns and not hasattr(v, "convert") and not callable(v)}
            out.append(Sample(f"{self.name}/{doc.doc_id}", image, question, _as_text(target), meta, doc=text_doc, error=error))
        return out

    def prompt(self, sample: Sample) -> str:
        return sample.question  # doc_to_text already holds the pre- and post-prompt

    # ------------------------------------------------------------------ scoring
    def normalize(self, text: str) -> str:
        """Predictions as compared for loyalty: the scorer's cleaning (reasoning blocks off,
        stripped), then lower case, punctuation, articles and number words."""
        return normalize_answer(clean_response(text))

    def evaluate(self, prediction: str, sample: Sample) -> tuple[float | None, dict[str, Any]]:
        results = self.spec.process_results(sample.doc, prediction)
        return float(self.spec.sample_score(results)), results

    def score(self, prediction: str, sample: Sample) -> float:
        return self.evaluate(prediction, sample)[0]

    def aggregate(self, rows: list[dict]) -> dict[str, float]:
        return aggregate_all(self.spec, [r["metrics"] for r in rows if r.get("metrics")])

    def primary_interval(self, rows: list[dict], seed: int, resamples: int = 1000, level: float = 0.95) -> tuple[float, float]:
        """Percentile bootstrap of the primary metric, re-aggregated on each resample of rows
        (of whole groups for grouped metrics: MME image pairs, MMBench rotations,
        HallusionBench question sets)."""
        metrics = [r["metrics"] for r in rows if r.get("metrics")]
        if not metrics:
            return (float("nan"), float("nan"))
        units = unit_index(self.name, metrics)
        rng = np.random.default_rng(seed)
        primary = self.spec.primary_metric
        values = []
        for _ in range(resamples):
            draw = rng.integers(0, len(units), size=len(units)).tolist()
            sample = resample_units(self.name, metrics, draw, units)
            feeding = [r[primary] for r in sample if primary in r]
            if feeding:
                values.append(self.spec.aggregate(primary, feeding))
        if not values:
            return (float("nan"), float("nan"))
        alpha = (1 - level) / 2
        return (float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha)))

    def describe(self) -> dict[str, Any]:
        spec = self.spec
        return {
            "dataset": spec.dataset_id,
            "also_accepted": list(spec.aliases),
            "config": spec.config,
            "split": spec.split,
            "metrics": [*spec.metrics, *spec.extra_metrics],
            "primary_metric": spec.primary_metric,
            "max_new_tokens": self.max_new_tokens,
            "judge": spec.judge,
        }


def _as_text(target: Any) -> str:
    if isinstance(target, (list, tuple)):
        return " | ".join(str(t) for t in target)
    return str(target)


for _spec in LMMS_TASK_SPECS.values():
    TASKS.register(LmmsTask.from_spec(_spec))
