"""Tasks: where samples come from, how a sample is asked, and how answers are scored.

A task is registered by name (lm-eval's task registry is the model).  It hands out
:class:`Sample` objects for a seed and a limit, scores one prediction against its sample,
and aggregates per-sample rows into the task's metrics (every task reports ``accuracy``
in 0–1, plus whatever its benchmark's own scorer defines).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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


@dataclass
class Task:
    name: str
    description: str = ""
    category: str = ""
    max_new_tokens: int = 8
    # How a sample's question is put to the model inside the model's own chat template
    # (lmms-eval's VQA tasks append "Answer the question using a single word or phrase.").
    prompt_template: str = "{question}"

    def prompt(self, sample: Sample) -> str:
        return self.prompt_template.format(question=sample.question)

    def samples(self, seed: int, limit: int | None) -> list[Sample]:
        raise NotImplementedError

    def normalize(self, text: str) -> str:
        """The form in which two predictions are compared (also used for loyalty)."""
        return normalize_answer(text)

    def score(self, prediction: str, sample: Sample) -> float:
        return float(self.normalize(prediction) == self.normalize(sample.answer))

    def aggregate(self, rows: list[dict]) -> dict[str, float]:
        """``rows``: dicts with at least ``score``, ``prediction``, ``gold`` and ``meta``."""
        scored = [r for r in rows if r.get("score") is not None]
        return {"accuracy": sum(r["score"] for r in scored) / len(scored) if scored else float("nan")}
