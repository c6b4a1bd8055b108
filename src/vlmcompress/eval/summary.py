"""One finished cell summarised: the task's scores, bootstrap intervals, efficiency with
the bytes the model holds, and loyalty to the baseline's predictions on the same samples."""

from __future__ import annotations

from typing import Any

from ..footprint import model_weight_bytes
from ..methods import CompressionContext, Setting
from ..tasks import Task
from .loop import CellOutput
from .statistics import loyalty


def summarise_cell(
    cell_key: str,
    model_name: str,
    setting: Setting,
    task: Task,
    out: CellOutput,
    ctx: CompressionContext,
    baseline_rows: list[dict[str, Any]],
    seed: int,
) -> dict[str, Any]:
    """The cell's stored summary.  ``baseline_rows``: the baseline's sample rows of the same
    model and task (the cell's own rows when it is the baseline)."""
    rows = out.rows
    scored = [r for r in rows if r["error"] is None]
    primary = task.primary_metric
    scores = task.aggregate(scored) if scored else {primary: float("nan")}
    ci = {primary: list(task.primary_interval(scored, seed)) if scored else [float("nan"), float("nan")]}
    efficiency = dict(out.efficiency)
    efficiency["weight_bytes"] = model_weight_bytes(ctx.model)
    efficiency.update(ctx.info)  # a method's own count (e.g. packed weights) wins
    base = {r["sample_id"]: r for r in baseline_rows if r["error"] is None}
    pairs = [
        (task.normalize(r["prediction"]), task.normalize(base[r["sample_id"]]["prediction"]), r["score"], base[r["sample_id"]]["score"])
        for r in scored
        if r["sample_id"] in base
    ]
    return {
        "cell_key": cell_key,
        "model": model_name,
        "setting": setting.spec,
        "setting_normalized": setting.normalized,
        "task": task.name,
        "primary_metric": primary,
        "n": len(scored),
        "n_errors": len(rows) - len(scored),
        "scores": scores,
        "scores_ci": ci,
        "loyalty": {**loyalty(pairs), "errors": out.errors[:20]},
        "efficiency": efficiency,
    }
