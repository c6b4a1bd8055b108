"""SQLite store of a run: one row per cell, one per sample.  A cell's rows are written in
one transaction when the cell finishes, so a killed run loses only the cell in progress."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

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
    primary_metric TEXT NOT NULL DEFAULT 'accuracy'
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
"""
# Columns added after the first release: (table, column, declaration), added to an older store on open.
_ADDED_COLUMNS = (
    ("cells", "primary_metric", "TEXT NOT NULL DEFAULT 'accuracy'"),
    ("samples", "metrics", "TEXT"),
)

_JSON_CELL_FIELDS = ("scores", "scores_ci", "loyalty", "efficiency")


class Store:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path)
        self.db.executescript(SCHEMA)
        for table, column, decl in _ADDED_COLUMNS:
            have = {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")

    def close(self) -> None:
        self.db.close()

    def has_cell(self, cell_key: str) -> bool:
        return self.db.execute("SELECT 1 FROM cells WHERE cell_key = ?", (cell_key,)).fetchone() is not None

    def save_cell(self, cell: dict[str, Any], rows: list[dict[str, Any]]) -> None:
        with self.db:  # one transaction
            position = self.db.execute("SELECT COALESCE(MAX(position), -1) + 1 FROM cells").fetchone()[0]
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
                "INSERT OR REPLACE INTO cells (cell_key, model, setting, setting_normalized, task, n, n_errors, scores, scores_ci, loyalty, efficiency, finished, position, primary_metric)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    cell["cell_key"], cell["model"], cell["setting"], cell["setting_normalized"], cell["task"], cell["n"], cell["n_errors"],
                    json.dumps(cell["scores"]), json.dumps(cell["scores_ci"]), json.dumps(cell.get("loyalty")), json.dumps(cell["efficiency"]),
                    time.time(), position, cell.get("primary_metric", "accuracy"),
                ),
            )

    def cells(self) -> list[dict[str, Any]]:
        cur = self.db.execute("SELECT * FROM cells ORDER BY position")
        names = [d[0] for d in cur.description]
        out = []
        for row in cur.fetchall():
            cell = dict(zip(names, row))
            for f in _JSON_CELL_FIELDS:
                cell[f] = json.loads(cell[f]) if cell[f] is not None else None
            out.append(cell)
        return out

    def samples(self, cell_key: str) -> list[dict[str, Any]]:
        cur = self.db.execute("SELECT sample_id, prediction, gold, score, error, meta, stats, metrics FROM samples WHERE cell_key = ? ORDER BY rowid", (cell_key,))
        return [
            {"sample_id": s, "prediction": p, "gold": g, "score": sc, "error": e, "meta": json.loads(m), "stats": json.loads(st), "metrics": json.loads(mt) if mt else {}}
            for s, p, g, sc, e, m, st, mt in cur.fetchall()
        ]
