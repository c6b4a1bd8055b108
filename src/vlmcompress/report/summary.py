"""The numbers both reports (Markdown and HTML) show per setting, computed once: the
grid of cells of one model, per-task retention and OP against the baseline, mean
loyalty, and the efficiency figures averaged over a setting's tasks."""

from __future__ import annotations

import math
import re
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


# ---------------------------------------------------------------------------- families

# The method families the reports group settings by (a method's ``family``, or for FastV,
# which prunes visual tokens inside the language model, the visual-token family).
FAMILY_LABELS = {
    "weight_quantization": "weight quantization",
    "weight_pruning": "weight pruning",
    "kv_cache": "KV-cache quantization",
    "kv_eviction": "KV-cache eviction",
    "vision_tokens": "visual-token pruning",
}
STACK = "stack"
OTHER = "other"


def method_names(setting: str) -> list[str]:
    """The method names of a setting string (``rtn(bits=4)+kivi(bits=2)`` → ``[rtn, kivi]``);
    tolerant of anything (a name it cannot read is left out)."""
    if not isinstance(setting, str) or setting.strip() == BASELINE:
        return []
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(setting):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth = max(0, depth - 1)
        elif ch == "+" and depth == 0:
            parts.append(setting[start:i])
            start = i + 1
    parts.append(setting[start:])
    names = []
    for part in parts:
        m = re.match(r"\s*([A-Za-z_][A-Za-z0-9_]*)", part)
        if m:
            names.append(m.group(1))
    return names


def method_family(name: str) -> str:
    """The report's family label of one registered method (``other`` when unknown)."""
    try:
        from ..methods import METHODS

        cls = METHODS.get(name)
    except Exception:  # noqa: BLE001 - an unknown or unloadable method is "other"
        return OTHER
    family = getattr(cls, "family", None)
    if family is None and ".visual_tokens." in (getattr(cls, "__module__", "") + "."):
        family = "vision_tokens"
    return FAMILY_LABELS.get(family, OTHER) if family else OTHER


def setting_family(setting: str) -> str:
    """``baseline``, one method's family, or ``stack`` for several methods."""
    if not isinstance(setting, str) or setting.strip() == BASELINE:
        return "baseline"
    names = method_names(setting)
    if len(names) > 1:
        return STACK
    return method_family(names[0]) if names else OTHER


@dataclass
class FamilyRow:
    family: str
    settings: list[str]  # in table order
    best: str | None  # the setting with the highest OP (None: no OP yet)
    best_op: float | None


def _real(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def family_summary(mg: ModelGrid) -> list[FamilyRow]:
    """One row per method family present (the baseline left out), in the order families
    first appear: its settings and the one with the highest OP."""
    by_family: dict[str, list[str]] = {}
    for s in mg.settings:
        fam = setting_family(s)
        if fam != "baseline":
            by_family.setdefault(fam, []).append(s)
    out = []
    for fam, settings in by_family.items():
        best, best_op = None, None
        for s in settings:
            op, _ = op_and_loyalty(mg, s)
            if _real(op) and (best_op is None or op > best_op):
                best, best_op = s, op
        out.append(FamilyRow(fam, settings, best, best_op))
    return out


def cell_counts(cell: dict) -> tuple[int, int]:
    """(samples scored, samples errored) of a cell (0 for what it does not say)."""
    def as_int(x: Any) -> int:
        return int(x) if _real(x) else 0

    return as_int(cell.get("n")), as_int(cell.get("n_errors"))


def prefill_flops_of(mg: ModelGrid, setting: str) -> float | None:
    """Mean prefill FLOPs per sample over the setting's tasks.  A cell of a method that
    drops tokens counts its own (``prefill_flops``); a cell that keeps every token (no count
    of its own: weight and KV-cache methods, the baseline) costs what the task's full
    prompt costs, which the token-dropping cells report as ``prefill_flops_full``.  None
    unless every cell of the setting has a figure."""
    full: dict[str, list[float]] = defaultdict(list)
    for c in mg.cells:
        v = (c.get("efficiency") or {}).get("prefill_flops_full")
        if _real(v):
            full[c["task"]].append(float(v))
    vals = []
    for c in mg.cells_of(setting):
        v = (c.get("efficiency") or {}).get("prefill_flops")
        if not _real(v):
            ref = full.get(c["task"])
            v = sum(ref) / len(ref) if ref else None
        if not _real(v):
            return None
        vals.append(float(v))
    return sum(vals) / len(vals) if vals else None


def timing_caveats(mg: ModelGrid) -> list[str]:
    """What a reader of the measured speed-ups should know: cells timed on too few batches,
    or by more than one process (whose timings do not compare)."""
    out = []
    batches = []
    for c in mg.cells:
        eff = c.get("efficiency") or {}
        bs = eff.get("batch_size")
        n, n_err = cell_counts(c)
        if _real(bs) and bs > 0 and n + n_err > 0:
            batches.append(math.ceil((n + n_err) / bs))
    if batches and min(batches) < 3:
        out.append(
            f"the speed-ups come from as few as {min(batches)} timed batch(es) per cell: on a busy or shared machine they are mostly noise "
            "(time with a larger limit, three batches a cell or more)"
        )
    sessions = {(c.get("efficiency") or {}).get("timing_session") for c in mg.cells} - {None}
    if len(sessions) > 1:
        out.append(f"the cells were timed by {len(sessions)} different processes (a resumed run): speed-ups across them compare different conditions")
    return out
