"""Re-scoring saved predictions without a model (``vlmcompress score``).

The input is JSON lines, each ``{"doc_id": <row index in the split>, "prediction": <raw
model text>}``; a run's own ``samples.jsonl`` is accepted too (its rows carry ``doc_id``
under ``meta`` and name their task and setting).  The task's own scorer turns them into
its metrics, named and scaled as lmms-eval names and scales them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .tasks import TASKS


def read_predictions(path: str | Path, task: str, setting: str | None = None) -> dict[int, str]:
    """``{doc_id: prediction}`` of ``task`` from a predictions file (rows of other tasks, and
    rows without a prediction, i.e. failed samples, are skipped)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"predictions file {str(p)!r} does not exist")
    by_setting: dict[str | None, dict[int, str]] = {}
    for number, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{p.name} line {number}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise ConfigError(f"{p.name} line {number}: expected a JSON object with doc_id and prediction")
        if row.get("task", task) != task:
            continue
        doc_id = row.get("doc_id", (row.get("meta") or {}).get("doc_id"))
        if isinstance(doc_id, bool) or not isinstance(doc_id, int) or doc_id < 0:
            raise ConfigError(f"{p.name} line {number}: doc_id must be a non-negative integer, got {doc_id!r}")
        prediction = row.get("prediction")
        if prediction is None:
            continue
        if not isinstance(prediction, str):
            raise ConfigError(f"{p.name} line {number}: prediction must be a string, got {type(prediction).__name__}")
        by_setting.setdefault(row.get("setting"), {})[doc_id] = prediction
    if setting is not None:
        if setting not in by_setting:
            raise ConfigError(f"{p.name}: no predictions of setting {setting!r} for {task}; settings there: {', '.join(map(str, by_setting)) or '(none)'}")
        return by_setting[setting]
    if len(by_setting) > 1:
        raise ConfigError(f"{p.name} holds {task} predictions of several settings ({', '.join(map(str, by_setting))}); choose one with --setting")
    return next(iter(by_setting.values()), {})


def rescore(task_name: str, predictions: str | Path, data_dir: str | Path | None = None, setting: str | None = None) -> dict[str, Any]:
    """The task's metrics over the given predictions (docs without a prediction are left out,
    as a run leaves out its failed samples)."""
    task = TASKS.get(task_name)
    if task.describe().get("split") is None:
        raise ConfigError(f"{task_name} is not a dataset task: there are no dataset rows to re-score predictions against")
    preds = read_predictions(predictions, task_name, setting)
    if not preds:
        raise ConfigError(f"no predictions for {task_name} in {str(predictions)!r}")
    samples = {s.meta["doc_id"]: s for s in task.samples(0, max(preds) + 1, data_dir)}
    missing = sorted(set(preds) - set(samples))
    if missing:
        raise ConfigError(f"doc_id {missing[0]} is beyond the {task_name} split ({len(samples)} rows)")
    rows = []
    for doc_id in sorted(preds):
        score, metrics = task.evaluate(preds[doc_id], samples[doc_id])
        rows.append({"score": score, "metrics": metrics, "prediction": preds[doc_id]})
    return task.aggregate(rows)
