"""The output directory: ``results.json``, ``samples.jsonl``, ``report.md`` and
``report.html``.

During a sweep (:class:`OutputWriter`) each finished cell's sample rows are appended to
``samples.jsonl``, and the JSON and reports are re-rendered from the cells held in memory
at most every ``render_every_s`` seconds and once at the end, so writing outputs costs
the same per cell at 10 cells and at 1000 (re-reading the store and re-rendering every
plot after every cell grew quadratically with the sweep).  :func:`write_outputs`
rewrites everything from the store (``vlmcompress report``).  Every rewritten file is
replaced atomically."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from ..report.html import render_html
from ..report.markdown import render_markdown
from ..store import Store
from .lmms_results import lmms_blocks


def _clean(value: Any) -> Any:
    """JSON without NaN (not valid JSON): NaN becomes null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def results_from_cells(cells: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """The ``results.json`` document of stored cells (as :meth:`Store.cells` returns them)."""
    out = []
    for c in cells:
        detail = c["loyalty"] or {}
        out.append(
            {
                "model": c["model"],
                "setting": c["setting"],
                "setting_normalized": c["setting_normalized"],
                "task": c["task"],
                "primary_metric": c.get("primary_metric", "accuracy"),
                "n": c["n"],
                "n_errors": c["n_errors"],
                "scores": c["scores"],
                "scores_ci": c["scores_ci"],
                "loyalty": detail.get("agreement"),
                "loyalty_detail": {k: v for k, v in detail.items() if k != "agreement"},
                "efficiency": c["efficiency"],
            }
        )
    # the block lmms-eval's readers expect, per model and setting, next to our own cells
    return _clean({**meta, "cells": out, "lmms_eval": lmms_blocks(cells, meta)})


def _sample_lines(cell: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    return [json.dumps(_clean({"model": cell["model"], "setting": cell["setting"], "task": cell["task"], **r})) for r in rows]


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _render(out_dir: Path, store: Store, cells: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    results = results_from_cells(cells, meta)
    _atomic_write(out_dir / "results.json", json.dumps(results, indent=2) + "\n")
    rows_of = {c["cell_key"]: store.samples(c["cell_key"]) for c in cells}
    _atomic_write(out_dir / "report.md", render_markdown(results))
    _atomic_write(out_dir / "report.html", render_html(results, _disagreements(cells, rows_of)))
    return results


def write_outputs(out_dir: Path, store: Store, meta: dict[str, Any]) -> dict[str, Any]:
    """Rewrite every output file from the store."""
    cells = store.cells()
    lines = [line for c in cells for line in _sample_lines(c, store.samples(c["cell_key"]))]
    _atomic_write(out_dir / "samples.jsonl", "\n".join(lines) + ("\n" if lines else ""))
    return _render(out_dir, store, cells, meta)


class OutputWriter:
    """Outputs of a sweep in progress (see the module doc)."""

    def __init__(self, out_dir: Path, store: Store, render_every_s: float = 30.0) -> None:
        self.out_dir = out_dir
        self.store = store
        self.render_every_s = render_every_s
        self.cells = store.cells()  # a resumed run starts from what the store holds
        lines = [line for c in self.cells for line in _sample_lines(c, store.samples(c["cell_key"]))]
        _atomic_write(out_dir / "samples.jsonl", "".join(line + "\n" for line in lines))
        self._last_render = time.monotonic()

    def cell_finished(self, cell: dict[str, Any], rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
        self.cells = [c for c in self.cells if c["cell_key"] != cell["cell_key"]] + [cell]
        with open(self.out_dir / "samples.jsonl", "a") as f:
            f.write("".join(line + "\n" for line in _sample_lines(cell, rows)))
        if time.monotonic() - self._last_render >= self.render_every_s:
            self.render(meta)

    def render(self, meta: dict[str, Any]) -> dict[str, Any]:
        results = _render(self.out_dir, self.store, self.cells, meta)
        self._last_render = time.monotonic()
        return results

    def finish(self, meta: dict[str, Any]) -> dict[str, Any]:
        return self.render(meta)


def _disagreements(cells: list[dict], rows_of: dict[str, list[dict]], per_cell: int = 5) -> dict:
    """The first samples of each compressed cell whose prediction differs from the baseline's."""
    baseline = {(c["model"], c["task"]): {r["sample_id"]: r for r in rows_of[c["cell_key"]]} for c in cells if c["setting_normalized"] == "none"}
    out = {}
    for c in cells:
        base = baseline.get((c["model"], c["task"]))
        if c["setting_normalized"] == "none" or not base:
            continue
        rows = []
        for r in rows_of[c["cell_key"]]:
            b = base.get(r["sample_id"])
            if b is not None and r["prediction"] != b["prediction"]:
                rows.append({"sample_id": r["sample_id"], "prediction": r["prediction"], "baseline": b["prediction"], "gold": r["gold"]})
                if len(rows) == per_cell:
                    break
        out[(c["model"], c["setting"], c["task"])] = rows
    return out
