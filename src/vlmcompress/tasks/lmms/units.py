"""Resampling units of the grouped lmms-eval metrics, for bootstrap intervals.

A metric computed over groups of rows (MME's image pairs, MMBench's rotated copies,
HallusionBench's question sets) cannot be bootstrapped row by row: a resample would split
a group or repeat one of its rows.  These tasks are resampled by whole groups instead, and
a group drawn twice gets a fresh identity for its second copy, so the aggregate sees two
distinct groups, as a cluster bootstrap requires.  Other tasks resample rows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

Unit = Callable[[Mapping[str, Any]], Any]  # a group's identity, from one metric's per-sample value
Relabel = Callable[[Mapping[str, Any], int], dict[str, Any]]  # (that value, copy number or position) -> renamed copy


def _value(results: Mapping[str, Any]) -> Mapping[str, Any]:
    """The grouped tasks give every metric of a sample the same kind of value dict."""
    return next(iter(results.values()))


def _renamed(results: Mapping[str, Any], relabel: Relabel, n: int) -> dict[str, Any]:
    return {m: relabel(v, n) if isinstance(v, Mapping) else v for m, v in results.items()}


def _mme_unit(r: Mapping[str, Any]) -> Any:
    return (r["category"], r["question_id"])


def _mme_relabel(r: Mapping[str, Any], copy: int) -> dict[str, Any]:
    return {**r, "question_id": f"{r['question_id']}#{copy}"}


def _mmbench_unit(r: Mapping[str, Any]) -> Any:
    return int(r["index"]) % 1_000_000


def _hallusion_unit(r: Mapping[str, Any]) -> Any:
    return (r["category"], r["subcategory"], r["set_id"])


def _hallusion_relabel(r: Mapping[str, Any], copy: int) -> dict[str, Any]:
    return {**r, "set_id": f"{r['set_id']}#{copy}"}


def _mmbench_relabel(r: Mapping[str, Any], position: int) -> dict[str, Any]:
    """MMBench groups by ``index % 1e6`` with the original below 1e6: a copy keeps its
    rotation (``index // 1e6``) and takes the resample position as its question number."""
    return {**r, "index": (int(r["index"]) // 1_000_000) * 1_000_000 + position}


# task -> (unit, relabel, whether the relabel takes the resample position rather than the copy number)
GROUPED: dict[str, tuple[Unit, Relabel, bool]] = {
    "mme": (_mme_unit, _mme_relabel, False),
    "hallusion_bench_image": (_hallusion_unit, _hallusion_relabel, False),
    "mmbench_en_dev": (_mmbench_unit, _mmbench_relabel, True),
}


def resample_units(task: str, metrics: list[dict[str, Any]], draw: list[int], units: list[list[int]]) -> list[dict[str, Any]]:
    """The per-sample values of one bootstrap resample: ``draw`` indexes ``units`` (lists of
    row indices); every drawn unit becomes a distinct group."""
    grouped = GROUPED.get(task)
    out: list[dict[str, Any]] = []
    seen: dict[int, int] = {}
    for position, u in enumerate(draw):
        copy = seen.get(u, 0)
        seen[u] = copy + 1
        for i in units[u]:
            r = metrics[i]
            if grouped is not None and (grouped[2] or copy):
                r = _renamed(r, grouped[1], position if grouped[2] else copy)
            out.append(r)
    return out


def unit_index(task: str, metrics: list[dict[str, Any]]) -> list[list[int]]:
    """Row indices grouped into resampling units (one row each for ungrouped tasks)."""
    grouped = GROUPED.get(task)
    if grouped is None:
        return [[i] for i in range(len(metrics))]
    groups: dict[Any, list[int]] = {}
    for i, r in enumerate(metrics):
        groups.setdefault(grouped[0](_value(r)), []).append(i)
    return list(groups.values())
