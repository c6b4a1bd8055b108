"""SQLite store of a run: one row per cell, one per sample.  A cell's rows are written in
one transaction when the cell finishes, so a killed run loses only the cell in progress.

Every cell has a ``status``:

* ``complete``: every sample scored;
* ``partial``: some samples errored (``n`` scored, ``n_errors`` errored); a re-run retries
  only the errored samples, keeps the good rows and re-summarises the cell;
* ``failed``: the cell raised as a whole (a method's ``prepare``, an out-of-memory error, no
  sample scored); ``error`` holds the one-line reason.  A re-run skips it unless asked to
  retry failed cells (``vlmcompress run --retry-failed``).

A store is recognised by its ``application_id`` and its tables: a file that is not an
SQLite database, is damaged, or holds another program's tables is refused with one line
(:class:`~vlmcompress.errors.StoreError`) before any cell is computed, and nothing is
written to it."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from .errors import StoreError

APPLICATION_ID = 0x564C4D43  # "VLMC": PRAGMA application_id of a vlmcompress store

STATUSES = ("complete", "partial", "failed")

SCHEMA = """
CREATE TABLE IF NOT EXISTS cells (
    cell_key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    setting TEXT NOT NULL,
    setting_normalized TEXT NOT NULL,
    task TEXT NOT NULL,
    n INTEGER NOT NULL,
    n_errors INTEGER NOT NULL,
    scores TEXT NOT NULL,
    scores_ci TEXT NOT NULL,
    loyalty TEXT,
    efficiency TEXT NOT NULL,
    finished REAL NOT NULL,
    position INTEGER NOT NULL,
    primary_metric TEXT NOT NULL DEFAULT 'accuracy',
    status TEXT NOT NULL DEFAULT 'complete',
    error TEXT
);
CREATE TABLE IF NOT EXISTS samples (
    cell_key TEXT NOT NULL,
    sample_id TEXT NOT NULL,
    prediction TEXT,
    gold TEXT,
    score REAL,
    error TEXT,
    meta TEXT,
    stats TEXT,
    metrics TEXT,
    PRIMARY KEY (cell_key, sample_id)
);
CREATE TABLE IF NOT EXISTS run_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""
# The columns of the first release: a table named like ours that lacks one is not ours.
_FIRST_COLUMNS = {
    "cells": {"cell_key", "model", "setting", "setting_normalized", "task", "n", "n_errors", "scores", "scores_ci", "loyalty", "efficiency", "finished", "position"},
    "samples": {"cell_key", "sample_id", "prediction", "gold", "score", "error", "meta", "stats"},
}
# Columns added after the first release: (table, column, declaration, statement run once
# after adding it), added to an older store on open.
_ADDED_COLUMNS = (
    ("cells", "primary_metric", "TEXT NOT NULL DEFAULT 'accuracy'", None),
    ("samples", "metrics", "TEXT", None),
    # an older store's cells with errored samples were never retried: mark them partial
    ("cells", "status", "TEXT NOT NULL DEFAULT 'complete'", "UPDATE cells SET status = 'partial' WHERE n_errors > 0"),
    ("cells", "error", "TEXT", None),
)
_SQLITE_INTERNAL = ("sqlite_sequence", "sqlite_stat1", "sqlite_stat2", "sqlite_stat3", "sqlite_stat4")

_JSON_CELL_FIELDS = ("scores", "scores_ci", "loyalty", "efficiency")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def cell_status(n: int, n_errors: int) -> str:
    """``complete`` (no errored sample), ``partial`` (some) or ``failed`` (none scored)."""
    if n_errors == 0:
        return "complete"
    return "partial" if n > 0 else "failed"


class Store:
    def __init__(self, path: Path) -> None:
        path = Path(path)
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the folder of {str(path)!r}: {exc.strerror or _first_line(exc)}") from None
        self.db: sqlite3.Connection | None = None
        try:
            self.db = sqlite3.connect(path, timeout=30)
            self._open()
        except sqlite3.DatabaseError as exc:
            self.close()
            msg = _first_line(exc)
            if "readonly" in msg or "read-only" in msg or "unable to open" in msg:
                raise StoreError(f"cannot open the store {str(path)!r} for writing: {msg}") from None
            raise StoreError(f"{str(path)!r} is not a readable vlmcompress store ({msg}); move it away to start afresh") from None

    def _open(self) -> None:
        db = self.db
        app = db.execute("PRAGMA application_id").fetchone()[0]  # "file is not a database" shows here
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")} - set(_SQLITE_INTERNAL)
        foreign = None
        if app not in (0, APPLICATION_ID):
            foreign = f"its application_id is {app:#x}, not vlmcompress's"
        elif tables and "cells" not in tables:
            foreign = f"it holds the tables {', '.join(sorted(tables)[:5])}, not a vlmcompress store's"
        else:
            for table, needed in _FIRST_COLUMNS.items():
                if table not in tables:
                    if tables:
                        foreign = f"it has no {table} table"
                    continue
                have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
                if not needed <= have:
                    missing = sorted(needed - have)
                    foreign = f"its {table} table lacks the columns {', '.join(missing[:4])}{' and more' if len(missing) > 4 else ''}"
                    break
        if foreign is not None:
            raise StoreError(f"{str(self.path)!r} was not written by vlmcompress ({foreign}); choose another output folder or move it away")
        if tables:
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"damaged: {check}")
        db.executescript(SCHEMA)
        for table, column, decl, then in _ADDED_COLUMNS:
            have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                with db:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
                    if then:
                        db.execute(then)
        if app == 0:
            db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            db.commit()

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None

    def _write_error(self, exc: BaseException) -> StoreError:
        return StoreError(
            f"cannot write to the store {str(self.path)!r}: {_first_line(exc)}; every cell written before is kept "
            "(free space or fix the folder, then re-run with the same output to resume)"
        )

    # ------------------------------------------------------------------ reading
    def has_cell(self, cell_key: str) -> bool:
        """A cell is stored under this key (complete, partial or failed)."""
        return self.cell_status(cell_key) is not None

    def cell_status(self, cell_key: str) -> str | None:
        row = self.db.execute("SELECT status FROM cells WHERE cell_key = ?", (cell_key,)).fetchone()
        return None if row is None else row[0]

    def cell(self, cell_key: str) -> dict[str, Any] | None:
        cur = self.db.execute("SELECT * FROM cells WHERE cell_key = ?", (cell_key,))
        names = [d[0] for d in cur.description]
        row = cur.fetchone()
        return None if row is None else self._decode(dict(zip(names, row)))

    def _decode(self, cell: dict[str, Any]) -> dict[str, Any]:
        for f in _JSON_CELL_FIELDS:
            try:
                cell[f] = json.loads(cell[f]) if cell[f] is not None else None
            except ValueError:
                raise StoreError(f"{str(self.path)!r}: the {f} of cell {cell.get('setting')!r} | {cell.get('task')!r} is not JSON (the store was edited or damaged)") from None
        return cell

    def cells(self) -> list[dict[str, Any]]:
        """Every stored cell in the order first computed (failed ones too: see ``status``)."""
        cur = self.db.execute("SELECT * FROM cells ORDER BY position")
        names = [d[0] for d in cur.description]
        return [self._decode(dict(zip(names, row))) for row in cur.fetchall()]

    def samples(self, cell_key: str) -> list[dict[str, Any]]:
        cur = self.db.execute("SELECT sample_id, prediction, gold, score, error, meta, stats, metrics FROM samples WHERE cell_key = ? ORDER BY rowid", (cell_key,))
        out = []
        for s, p, g, sc, e, m, st, mt in cur.fetchall():
            try:
                out.append({"sample_id": s, "prediction": p, "gold": g, "score": sc, "error": e, "meta": json.loads(m), "stats": json.loads(st), "metrics": json.loads(mt) if mt else {}})
            except (TypeError, ValueError):
                raise StoreError(f"{str(self.path)!r}: sample {s!r} has unreadable fields (the store was edited or damaged)") from None
        return out

    # ------------------------------------------------------------------ writing
    def _position(self, cell_key: str) -> int:
        """A replaced cell keeps its place (a retried baseline stays the first column)."""
        row = self.db.execute("SELECT position FROM cells WHERE cell_key = ?", (cell_key,)).fetchone()
        if row is not None:
            return row[0]
        return self.db.execute("SELECT COALESCE(MAX(position), -1) + 1 FROM cells").fetchone()[0]

    def save_cell(self, cell: dict[str, Any], rows: list[dict[str, Any]]) -> None:
        """Store a computed cell and its sample rows (replacing any earlier version), in one
        transaction.  Its status follows from ``n`` and ``n_errors`` unless the cell names one."""
        status = cell.get("status") or cell_status(cell["n"], cell["n_errors"])
        if status not in STATUSES:
            raise ValueError(f"status {status!r}")
        error = cell.get("error")
        if status == "failed" and error is None:
            error = next((r["error"] for r in rows if r.get("error")), "no sample scored")
        try:
            with self.db:  # one transaction
                position = self._position(cell["cell_key"])
                self.db.execute("DELETE FROM samples WHERE cell_key = ?", (cell["cell_key"],))
                self.db.executemany(
                    "INSERT INTO samples (cell_key, sample_id, prediction, gold, score, error, meta, stats, metrics) VALUES (?,?,?,?,?,?,?,?,?)",
                    [
                        (
                            cell["cell_key"], r["sample_id"], r["prediction"], r["gold"], r["score"], r.get("error"),
                            json.dumps(r.get("meta", {})), json.dumps(r.get("stats", {})), json.dumps(r.get("metrics") or {}),
                        )
                        for r in rows
                    ],
                )
                self.db.execute(
                    "INSERT OR REPLACE INTO cells (cell_key, model, setting, setting_normalized, task, n, n_errors, scores, scores_ci, loyalty, efficiency, finished, position,"
                    " primary_metric, status, error) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        cell["cell_key"], cell["model"], cell["setting"], cell["setting_normalized"], cell["task"], cell["n"], cell["n_errors"],
                        json.dumps(cell["scores"]), json.dumps(cell["scores_ci"]), json.dumps(cell.get("loyalty")), json.dumps(cell["efficiency"]),
                        time.time(), position, cell.get("primary_metric", "accuracy"), status, error,
                    ),
                )
        except sqlite3.DatabaseError as exc:
            raise self._write_error(exc) from None
        cell["status"], cell["error"] = status, error

    def save_failed_cell(self, cell: dict[str, Any], error: str) -> dict[str, Any]:
        """Record a cell that raised as a whole (no sample rows); returns the stored cell."""
        stored = {
            **cell,
            "n": 0,
            "n_errors": 0,
            "scores": {},
            "scores_ci": {},
            "loyalty": None,
            "efficiency": cell.get("efficiency") or {},
            "status": "failed",
            "error": error,
        }
        self.save_cell(stored, [])
        return stored

    def set_meta(self, meta: dict[str, Any]) -> None:
        """The latest run's config, versions and date (``vlmcompress report`` reads them
        here, so a damaged ``results.json`` is simply rewritten)."""
        try:
            with self.db:
                self.db.execute("INSERT OR REPLACE INTO run_meta (key, value) VALUES ('meta', ?)", (json.dumps(meta, default=str),))
        except sqlite3.DatabaseError as exc:
            raise self._write_error(exc) from None

    def meta(self) -> dict[str, Any] | None:
        row = self.db.execute("SELECT value FROM run_meta WHERE key = 'meta'").fetchone()
        if row is None:
            return None
        try:
            meta = json.loads(row[0])
        except ValueError:
            return None
        return meta if isinstance(meta, dict) else None

    def update_loyalty(self, cell_key: str, loyalty: dict[str, Any]) -> None:
        """Replace a stored cell's loyalty (its baseline was completed after it)."""
        try:
            with self.db:
                self.db.execute("UPDATE cells SET loyalty = ? WHERE cell_key = ?", (json.dumps(loyalty), cell_key))
        except sqlite3.DatabaseError as exc:
            raise self._write_error(exc) from None
