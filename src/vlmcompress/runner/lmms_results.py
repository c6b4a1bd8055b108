"""Results in the shape lmms-eval writes them, so tools that read lmms-eval's output read ours.

Per model and setting, the block lmms-eval 0.7's ``evaluator.evaluate`` returns
(``results`` with ``"<metric>,none"`` and ``"<metric>_stderr,none"`` keys, ``configs``,
``versions``, ``n-shot``, ``higher_is_better``, ``n-samples``) plus the tracker's
``config``, ``git_hash`` and ``date``; per-sample logs with lmms-eval's fields
(``doc_id``, ``target``, ``arguments``, ``resps``, ``filtered_resps``, ``doc_hash`` and the
sample's metric values) next to ours.  ``export_lmms_eval`` writes one lmms-eval-style folder
per model and setting.

The stderr lmms-eval reports is the standard error of the metric; ours is derived from the
95% bootstrap interval of the primary metric, ``(hi - lo) / (2 * 1.96)``; other metrics get
lmms-eval's ``"N/A"``.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path
from typing import Any

from ..tasks import TASKS

LMMS_FILTER = "none"  # lmms-eval's filter name for tasks without a filter pipeline


def git_hash() -> str | None:
    """The project's commit, as lmms-eval records its own (None outside a git checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _task_config(task_name: str) -> dict[str, Any]:
    if task_name not in TASKS:
        return {"task": task_name}
    d = TASKS.get(task_name).describe()
    return {
        "task": task_name,
        "dataset_path": d.get("dataset"),
        "dataset_name": d.get("config"),
        "test_split": d.get("split"),
        "generation_kwargs": {"max_new_tokens": d.get("max_new_tokens") or TASKS.get(task_name).max_new_tokens, "do_sample": False, "num_beams": 1},
        "metric_list": [{"metric": m} for m in d.get("metrics", [])],
    }


def results_block(cells: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """lmms-eval's results dict for the cells of ONE model and setting (one cell per task)."""
    results, configs, versions, n_shot, better, n_samples = {}, {}, {}, {}, {}, {}
    for c in cells:
        task = c["task"]
        primary = c.get("primary_metric") or "accuracy"
        entry: dict[str, Any] = {"alias": task}
        lo, hi = (c.get("scores_ci") or {}).get(primary, [None, None])
        for metric, value in c["scores"].items():
            entry[f"{metric},{LMMS_FILTER}"] = value
            stderr: Any = "N/A"
            if metric == primary and lo is not None and hi is not None:
                stderr = (hi - lo) / (2 * 1.96)
            entry[f"{metric}_stderr,{LMMS_FILTER}"] = stderr
        results[task] = entry
        configs[task] = _task_config(task)
        versions[task] = "Yaml"
        n_shot[task] = 0
        better[task] = {m: True for m in c["scores"]}
        n_samples[task] = {"original": c["n"] + c.get("n_errors", 0), "effective": c["n"]}
    cfg = meta.get("config", {})
    first = cells[0] if cells else {}
    return {
        "results": results,
        "group_subtasks": {t: [] for t in results},
        "configs": configs,
        "versions": versions,
        "n-shot": n_shot,
        "higher_is_better": better,
        "n-samples": n_samples,
        "config": {
            "model": "vlmcompress",
            "model_args": f"pretrained={first.get('model')},compression={first.get('setting')}",
            "batch_size": cfg.get("batch_size"),
            "limit": cfg.get("limit"),
        },
        "git_hash": meta.get("git_hash"),
        "date": meta.get("date"),
    }


def lmms_blocks(cells: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{model: {setting: results block}}`` of every stored cell."""
    grouped: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for c in cells:
        grouped.setdefault(c["model"], {}).setdefault(c["setting"], []).append(c)
    return {model: {setting: results_block(cs, meta) for setting, cs in by_setting.items()} for model, by_setting in grouped.items()}


def sample_log(row: dict[str, Any], task: str) -> dict[str, Any]:
    """One per-sample log line with lmms-eval's fields, then ours."""
    meta = row.get("meta") or {}
    doc_id = meta.get("doc_id", row.get("sample_id"))
    prediction = row.get("prediction")
    out = {
        "doc_id": doc_id,
        "target": row.get("gold"),
        "arguments": [],
        "resps": [[prediction]] if prediction is not None else [],
        "filtered_resps": [prediction] if prediction is not None else [],
        "doc_hash": hashlib.sha256(json.dumps({"task": task, "doc_id": doc_id}, sort_keys=True).encode()).hexdigest(),
    }
    out.update(row.get("metrics") or {})
    out.update({"sample_id": row.get("sample_id"), "score": row.get("score"), "error": row.get("error"), "stats": row.get("stats") or {}})
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_")[:120] or "setting"


def _folder_name(text: str, taken: set[str]) -> str:
    """A file-system-safe folder name for a model or setting, unique among ``taken``: the
    slug, with a hash of the full text when the slug was cut or is taken already."""
    name = _slug(text)
    full = re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_")
    if name in taken or len(full) > len(name) or name in (".", ".."):
        name = f"{name[:110]}_{hashlib.sha256(text.encode('utf-8', 'replace')).hexdigest()[:8]}"
    taken.add(name)
    return name


def export_lmms_eval(cells: list[dict[str, Any]], rows_of: dict[str, list[dict[str, Any]]], meta: dict[str, Any], out: Path) -> list[Path]:
    """One lmms-eval-style folder per model and setting under ``out``:
    ``<model>/<setting>/<date>_results.json`` and ``<date>_samples_<task>.jsonl``; returns
    the results files written, one per folder."""
    date_id = re.sub(r"[^A-Za-z0-9._+=-]+", "_", str(meta.get("date") or "unknown").replace(":", "-"))[:64]
    cells = [c for c in cells if c.get("status") != "failed"]  # raised as a whole: nothing to report
    written = []
    models_taken: set[str] = set()
    for model, by_setting in lmms_blocks(cells, meta).items():
        model_dir, settings_taken = _folder_name(model, models_taken), set()
        for setting, block in by_setting.items():
            folder = out / model_dir / _folder_name(setting, settings_taken)
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{date_id}_results.json"
            path.write_text(json.dumps(block, indent=2, default=str) + "\n")
            written.append(path)
            for c in cells:
                if c["model"] == model and c["setting"] == setting:
                    lines = [json.dumps(sample_log(r, c["task"]), default=str) for r in rows_of.get(c["cell_key"], [])]
                    (folder / f"{date_id}_samples_{c['task']}.jsonl").write_text("".join(line + "\n" for line in lines))
    return written


def _run_meta(run_dir: Path, store: Any) -> dict[str, Any]:
    """The run's config, versions and date: ``results.json`` without its cells, else what
    the store holds (an unreadable ``results.json`` is an error only when the store holds
    nothing either)."""
    from ..errors import VlmCompressError

    path = run_dir / "results.json"
    problem = None
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict):
                return {k: v for k, v in data.items() if k not in ("cells", "failed_cells", "lmms_eval")}
            problem = "does not hold a JSON object"
        except (OSError, ValueError) as exc:
            problem = f"is not readable JSON ({type(exc).__name__})"
    stored = store.meta() if hasattr(store, "meta") else None
    if isinstance(stored, dict):
        return stored
    if problem:
        raise VlmCompressError(f"{str(path)!r} {problem}, and the store does not hold the run's config: restore it or re-run `vlmcompress report`")
    return {}


def export_run(run_dir: Path, out: Path) -> list[Path]:
    """``vlmcompress export-lmms-eval``: the store of ``run_dir`` exported with
    :func:`export_lmms_eval` under ``out`` (cells that failed as a whole are left out).
    Problems a user can fix raise :class:`~vlmcompress.errors.VlmCompressError` with one line."""
    import sqlite3

    from ..errors import VlmCompressError
    from ..store import Store

    run_dir, out = Path(run_dir), Path(out)
    db = run_dir / "results.sqlite"
    if not db.is_file():
        raise VlmCompressError(f"{str(run_dir)!r} holds no results.sqlite (not a vlmcompress run directory)")
    try:
        store = Store(db)
    except sqlite3.DatabaseError as exc:
        raise VlmCompressError(f"{str(db)!r} is not a readable vlmcompress store ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    try:
        cells = [c for c in store.cells() if c.get("status") != "failed"]
        rows_of = {c["cell_key"]: store.samples(c["cell_key"]) for c in cells}
        meta = _run_meta(run_dir, store)
    except sqlite3.DatabaseError as exc:
        raise VlmCompressError(f"{str(db)!r} cannot be read: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    finally:
        store.close()
    if not cells:
        raise VlmCompressError(f"{str(run_dir)!r} holds no finished cell to export")
    if out.exists() and not out.is_dir():
        raise VlmCompressError(f"{str(out)!r} is a file, not a folder")
    try:
        return export_lmms_eval(cells, rows_of, meta, out)
    except OSError as exc:
        raise VlmCompressError(f"cannot write under {str(out)!r}: {exc.strerror or type(exc).__name__}{': ' + str(exc.filename) if exc.filename else ''}") from None
