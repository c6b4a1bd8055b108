"""The numbers both reports (Markdown and HTML) show per setting, computed once: the
grid of cells of one model, per-task retention and OP against the baseline, mean
loyalty, and the efficiency figures averaged over a setting's tasks."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from ..eval.statistics import overall_generalization, overall_performance

BASELINE = "none"


@dataclass
class ModelGrid:
    """The cells of one model, by (setting, task), in the order they first appear."""

    cells: list[dict]
    tasks: list[str]
    settings: list[str]
    grid: dict[tuple[str, str], dict]

    def cells_of(self, setting: str) -> list[dict]:
        """The setting's cells, in task order (tasks it has no cell for are skipped)."""
        return [self.grid[(setting, t)] for t in self.tasks if (setting, t) in self.grid]

    def baseline_cells(self) -> list[dict]:
        return self.cells_of(BASELINE)


def model_grids(cells: list[dict]) -> dict[str, ModelGrid]:
    """One :class:`ModelGrid` per model, in the order models first appear."""
    by_model: dict[str, list[dict]] = defaultdict(list)
    for c in cells:
        by_model[c["model"]].append(c)
    out = {}
    for model, mcells in by_model.items():
        out[model] = ModelGrid(
            cells=mcells,
            tasks=list(dict.fromkeys(c["task"] for c in mcells)),
            settings=list(dict.fromkeys(c["setting"] for c in mcells)),
            grid={(c["setting"], c["task"]): c for c in mcells},
        )
    return out


def primary_metric(cell: dict) -> str:
    """The task's primary metric (``accuracy`` for results written before tasks named one)."""
    return cell.get("primary_metric") or "accuracy"


def primary_score(cell: dict) -> float | None:
    return cell["scores"].get(primary_metric(cell))


def retention(cell: dict, base: dict | None) -> float | None:
    """The primary metric over the baseline's on the same task; ``None`` when either is
    missing (or the baseline's is 0)."""
    score = primary_score(cell)
    if not base or not primary_score(base) or score is None:
        return None
    return score / primary_score(base)


def retentions_of(mg: ModelGrid, setting: str) -> list[float]:
    out = []
    for t in mg.tasks:
        c = mg.grid.get((setting, t))
        r = retention(c, mg.grid.get((BASELINE, t))) if c is not None else None
        if r is not None:
            out.append(r)
    return out


def overall_generalization_of(mg: ModelGrid, setting: str) -> float | None:
    """The setting's OG: coefficient of variation of its tasks' retention (lower = more uniform)."""
    r = retentions_of(mg, setting)
    return overall_generalization(r) if len(r) > 1 else None


def op_and_loyalty(mg: ModelGrid, setting: str) -> tuple[float | None, float | None]:
    """The setting's OP (root mean square of its tasks' retention) and mean loyalty."""
    retentions, loyal = [], []
    for t in mg.tasks:
        c = mg.grid.get((setting, t))
        if c is None:
            continue
        r = retention(c, mg.grid.get((BASELINE, t)))
        if r is not None:
            retentions.append(r)
        if c.get("loyalty") is not None:
            loyal.append(c["loyalty"])
    op = overall_performance(retentions) if retentions else None
    return op, (sum(loyal) / len(loyal) if loyal else None)


def mean_efficiency(cells: list[dict], key: str) -> float | None:
    """Mean of ``efficiency[key]`` over the cells that report it."""
    vals = [c["efficiency"].get(key) for c in cells if c["efficiency"].get(key) is not None]
    return sum(vals) / len(vals) if vals else None


def speedup(base: float | None, value: float | None) -> float | None:
    """``base / value`` (a time against the baseline's), when both are real and non-zero."""
    try:
        if base and value and not math.isnan(base) and not math.isnan(value):
            return base / value
    except TypeError:
        pass
    return None


def is_significant(cell: dict, setting: str) -> bool:
    """McNemar's exact test finds the setting's change from the baseline significant."""
    p = (cell.get("loyalty_detail") or {}).get("mcnemar_p")
    return setting != BASELINE and p is not None and p < 0.05


def primary_with_ci(cell: dict) -> tuple[Any, Any, Any]:
    """The primary metric and its 95% bootstrap interval."""
    lo, hi = (cell.get("scores_ci") or {}).get(primary_metric(cell), [None, None])
    return primary_score(cell), lo, hi
