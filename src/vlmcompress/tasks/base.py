"""Tasks: where samples come from, how a sample is asked, and how answers are scored.

A task is registered by name (lm-eval's task registry is the model).  It hands out
:class:`Sample` objects for a seed and a limit (from a local data folder when the task
reads a dataset), scores one prediction against its sample (a per-sample score, plus the
per-sample values its metrics aggregate), aggregates rows into the task's metrics, and
names its primary metric: the one retention, OP, OG, loyalty and intervals use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..eval.statistics import bootstrap_ci
from ..registry import Registry
from .scoring import normalize_answer

TASKS: Registry["Task"] = Registry("task")


@dataclass
class Sample:
    id: str
    image: Any  # a PIL image
    question: str
    answer: str  # the gold answer
    meta: dict[str, Any] = field(default_factory=dict)
    doc: dict[str, Any] | None = None  # the dataset row its scorer reads (images excluded; never stored)
    error: str | None = None  # why the sample cannot be run (e.g. its image does not decode)

    def load_image(self) -> Any:
        """The image as a PIL image; a dataset task may hold a loader that decodes it only
        when its batch runs (``image`` is then a callable)."""
        return self.image() if callable(self.image) else self.image


@dataclass
class Task:
    name: str
    description: str = ""
    category: str = ""
    max_new_tokens: int = 8
    # How a sample's question is put to the model inside the model's own chat template
    # (lmms-eval's VQA tasks append "Answer the question using a single word or phrase.").
    prompt_template: str = "{question}"
    primary_metric: str = "accuracy"  # the metric retention, OP, OG, loyalty and intervals use

    def prompt(self, sample: Sample) -> str:
        return self.prompt_template.format(question=sample.question)

    def samples(self, seed: int, limit: int | None, data_dir: str | Path | None = None) -> list[Sample]:
        """``limit`` samples (all when None); ``data_dir``: where local dataset copies live."""
        raise NotImplementedError

    def evaluate(self, prediction: str, sample: Sample) -> tuple[float | None, dict[str, Any]]:
        """(per-sample score, per-sample metric values its aggregate reads; empty when the
        aggregate reads the rows' scores alone)."""
        return self.score(prediction, sample), {}

    def normalize(self, text: str) -> str:
        """The form in which two predictions are compared (also used for loyalty)."""
        return normalize_answer(text)

    def score(self, prediction: str, sample: Sample) -> float:
        return float(self.normalize(prediction) == self.normalize(sample.answer))

    def aggregate(self, rows: list[dict]) -> dict[str, float]:
        """``rows``: dicts with at least ``score``, ``prediction``, ``gold``, ``meta`` and ``metrics``."""
        scored = [r for r in rows if r.get("score") is not None]
        return {"accuracy": sum(r["score"] for r in scored) / len(scored) if scored else float("nan")}

    def primary_interval(self, rows: list[dict], seed: int) -> tuple[float, float]:
        """95% bootstrap interval of the primary metric (here: the mean per-sample score)."""
        return bootstrap_ci([r["score"] for r in rows if r.get("score") is not None], seed=seed)

    def with_run_options(self, *, toxicity_model: str | None = None) -> "Task":
        """This task as a run configures it (options that do not concern it are ignored)."""
        return self

    def describe(self) -> dict[str, Any]:
        """What ``vlmcompress list tasks`` shows besides the name."""
        return {"dataset": "built-in synthetic suite", "metrics": ["accuracy"], "primary_metric": self.primary_metric}
