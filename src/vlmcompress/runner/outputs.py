"""The output directory: ``results.json``, ``samples.jsonl``, ``report.md`` and
``report.html``.

During a sweep (:class:`OutputWriter`) each finished cell's sample rows are appended to
``samples.jsonl``, and the JSON and reports are re-rendered from the cells held in memory
at most every ``render_every_s`` seconds and once at the end, so writing outputs costs
the same per cell at 10 cells and at 1000 (re-reading the store and re-rendering every
plot after every cell grew quadratically with the sweep).  :func:`write_outputs`
rewrites everything from the store (``vlmcompress report``).  Every rewritten file is
written under a unique temporary name in the same folder and renamed over the old one
(``os.replace``), so a reader or a killed writer never sees half a file; a failed append
to ``samples.jsonl`` is cut back, and the next run rewrites it from the store anyway.

:class:`OutputLock` holds ``OUT/.lock`` (``fcntl.flock``, exclusive, with the holder's PID
in it) for as long as a run or a report writes the folder: a second process refuses with
one line naming the holder's PID, or waits for it (``--wait``).  The kernel drops the lock
when its process dies, however it dies.

``results.json`` lists the cells that scored (``status`` ``complete`` or ``partial``,
with ``n`` scored and ``n_errors`` errored samples) under ``cells`` and the cells that
raised as a whole under ``failed_cells`` (model, setting, task, ``error``)."""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from ..errors import OutputBusyError, StoreError
from ..methods.spec import short
from ..report.html import render_html
from ..report.markdown import render_markdown
from ..store import Store
from .lmms_results import lmms_blocks

try:
    import fcntl
except ImportError:  # not on POSIX: no lock
    fcntl = None

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
_TMP_PREFIX = ".vlmc-"
_UMASK = os.umask(0)
os.umask(_UMASK)


def _clean(value: Any) -> Any:
    """JSON without NaN (not valid JSON): NaN becomes null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _failed(cell: dict[str, Any]) -> bool:
    return cell.get("status") == "failed"


def results_from_cells(cells: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """The ``results.json`` document of stored cells (as :meth:`Store.cells` returns them)."""
    out = []
    failed = [
        {"model": c["model"], "setting": c["setting"], "task": c["task"], "error": c.get("error"), "n_errors": c.get("n_errors", 0)}
        for c in cells
        if _failed(c)
    ]
    cells = [c for c in cells if not _failed(c)]
    for c in cells:
        detail = c["loyalty"] or {}
        out.append(
            {
                "model": c["model"],
                "setting": c["setting"],
                "setting_normalized": c["setting_normalized"],
                "task": c["task"],
                "primary_metric": c.get("primary_metric", "accuracy"),
                "status": c.get("status") or ("partial" if c["n_errors"] else "complete"),
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
    return _clean({**meta, "cells": out, "failed_cells": failed, "lmms_eval": lmms_blocks(cells, meta)})


def _sample_lines(cell: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    return [json.dumps(_clean({"model": cell["model"], "setting": cell["setting"], "task": cell["task"], **r})) for r in rows]


def _write_failed(path: Path, exc: OSError) -> StoreError:
    why = exc.strerror or type(exc).__name__
    return StoreError(f"cannot write {str(path)!r}: {why}; the store keeps every finished cell (free space or fix the folder, then re-run with the same output to resume)")


def _atomic_write(path: Path, text: str) -> None:
    """Write ``path`` under a unique temporary name beside it, then rename it over."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{_TMP_PREFIX}{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), 0o666 & ~_UMASK)  # as a plain open() would create it
            f.write(text)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise _write_failed(path, exc) from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _append(path: Path, text: str) -> None:
    """Append ``text``; on any failure (a full disk, an interrupt) cut the file back to where
    it was, so no half line is left."""
    data = text.encode("utf-8")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as exc:
        raise _write_failed(path, exc) from None
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except BaseException as exc:
            try:
                os.ftruncate(fd, start)
            except OSError:
                pass
            if isinstance(exc, OSError):
                raise _write_failed(path, exc) from None
            raise
    finally:
        os.close(fd)


def remove_stale_temporaries(out_dir: Path) -> None:
    """Temporary files a killed writer left (only while holding the folder's lock)."""
    for tmp in out_dir.glob(f"{_TMP_PREFIX}*.tmp"):
        try:
            tmp.unlink()
        except OSError:
            pass


class OutputLock:
    """Exclusive hold of an output folder (module doc); a context manager."""

    def __init__(self, out_dir: Path, wait: bool = False, echo: Callable[[str], None] | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / LOCK_NAME
        self.wait = wait
        self.echo = echo or (lambda msg: None)
        self.fd: int | None = None

    def holder(self) -> str:
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                text = f.read(64).strip()
        except OSError:
            return "unknown"
        return text if text.isdigit() else "unknown"

    def acquire(self) -> "OutputLock":
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise StoreError(f"output folder {short(str(self.out_dir), 100)} is not writable: {exc.strerror or type(exc).__name__}") from None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = self.holder()
                if not self.wait:
                    os.close(fd)
                    raise OutputBusyError(
                        f"output folder {short(str(self.out_dir), 100)} is in use by another vlmcompress process (PID {pid}); "
                        "wait for it to finish, pass --wait, or choose another --output"
                    ) from None
                self.echo(f"waiting for PID {pid}, which holds {self.out_dir} ...")
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except BaseException:
                    os.close(fd)
                    raise
            except OSError as exc:  # a file system without locks (some network mounts)
                log.warning("cannot lock %s (%s); going on without a lock", self.path, exc)
        self.fd = fd
        try:  # the holder's PID, for the message of a process that finds the folder locked
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass  # a full disk: the lock holds all the same
        remove_stale_temporaries(self.out_dir)
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # drops the flock; the file stays (removing it would race)
            self.fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def prepare_output_dir(output: str) -> Path:
    """The output folder, created if needed; one line when it cannot be."""
    out_dir = Path(output).expanduser()
    where = short(str(output), 100)
    try:
        if out_dir.exists() and not out_dir.is_dir():
            raise StoreError(f"output {where} is a file, not a folder")
        out_dir.mkdir(parents=True, exist_ok=True)
    except StoreError:
        raise
    except NotADirectoryError:
        parent = next((p for p in out_dir.parents if p.exists() and not p.is_dir()), None)
        raise StoreError(f"output {where} cannot be created: {str(parent) if parent else 'a parent'!r} is a file, not a folder") from None
    except FileExistsError:
        raise StoreError(f"output {where} cannot be created: a file is in the way") from None
    except OSError as exc:
        raise StoreError(f"output {where} cannot be created: {exc.strerror or type(exc).__name__}") from None
    except ValueError as exc:  # a NUL byte
        raise StoreError(f"output {where}: {exc}") from None
    return out_dir


def _render(out_dir: Path, store: Store, cells: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    results = results_from_cells(cells, meta)
    _atomic_write(out_dir / "results.json", json.dumps(results, indent=2) + "\n")
    scored = [c for c in cells if not _failed(c)]
    rows_of = {c["cell_key"]: store.samples(c["cell_key"]) for c in scored}
    _atomic_write(out_dir / "report.md", render_markdown(results))
    _atomic_write(out_dir / "report.html", render_html(results, _disagreements(scored, rows_of)))
    return results


def _all_sample_lines(store: Store, cells: list[dict[str, Any]]) -> str:
    lines = [line for c in cells for line in _sample_lines(c, store.samples(c["cell_key"]))]
    return "".join(line + "\n" for line in lines)


def write_outputs(out_dir: Path, store: Store, meta: dict[str, Any]) -> dict[str, Any]:
    """Rewrite every output file from the store."""
    cells = store.cells()
    _atomic_write(out_dir / "samples.jsonl", _all_sample_lines(store, cells))
    return _render(out_dir, store, cells, meta)


class OutputWriter:
    """Outputs of a sweep in progress (see the module doc)."""

    def __init__(self, out_dir: Path, store: Store, render_every_s: float = 30.0) -> None:
        self.out_dir = out_dir
        self.store = store
        self.render_every_s = render_every_s
        self.cells = store.cells()  # a resumed run starts from what the store holds
        self._index = {c["cell_key"]: i for i, c in enumerate(self.cells)}
        # rewritten from the store: drops whatever a killed run appended after its last commit
        _atomic_write(out_dir / "samples.jsonl", _all_sample_lines(store, self.cells))
        self._last_render = time.monotonic()

    def _put(self, cell: dict[str, Any]) -> bool:
        """Hold ``cell`` in memory at its place; True when it replaced one."""
        i = self._index.get(cell["cell_key"])
        if i is not None:
            self.cells[i] = cell
            return True
        self._index[cell["cell_key"]] = len(self.cells)
        self.cells.append(cell)
        return False

    def cell_finished(self, cell: dict[str, Any], rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
        if self._put(cell):  # a retried cell: its earlier rows are in samples.jsonl already
            _atomic_write(self.out_dir / "samples.jsonl", _all_sample_lines(self.store, self.cells))
        else:
            _append(self.out_dir / "samples.jsonl", "".join(line + "\n" for line in _sample_lines(cell, rows)))
        if time.monotonic() - self._last_render >= self.render_every_s:
            self.render(meta)

    def cell_updated(self, cell: dict[str, Any]) -> None:
        """A stored cell's summary changed, not its rows (loyalty against a completed baseline)."""
        self._put(cell)

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
