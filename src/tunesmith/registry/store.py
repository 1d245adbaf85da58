"""The registry: a SQLite index of datasets, runs and evaluations. The folders stay the truth;
the index makes them listable and comparable across iterations."""

from __future__ import annotations

import json
import sqlite3
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

_SCHEMA = """
CREATE TABLE IF NOT EXISTS datasets (
  name TEXT PRIMARY KEY, version TEXT NOT NULL, path TEXT NOT NULL, format TEXT NOT NULL,
  counts TEXT NOT NULL, source TEXT NOT NULL, created TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
  id TEXT PRIMARY KEY, name TEXT, base_model TEXT NOT NULL, method TEXT NOT NULL,
  dataset TEXT NOT NULL, dataset_version TEXT NOT NULL, status TEXT NOT NULL, path TEXT NOT NULL,
  best_val_loss REAL, created TEXT NOT NULL, finished TEXT);
CREATE TABLE IF NOT EXISTS evaluations (
  id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, model_id TEXT NOT NULL,
  split TEXT NOT NULL, n INTEGER NOT NULL, metrics TEXT NOT NULL, created TEXT NOT NULL);
"""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Registry:
    def __init__(self, db_path: Path):
        self.db_path = db_path
        with self._connect() as db:
            db.executescript(_SCHEMA)
            columns = {r["name"] for r in db.execute("PRAGMA table_info(evaluations)")}
            # Added columns (older registries gain them, their rows keep NULL): the rows one `tunesmith eval`
            # wrote share an evaluation id, so base and tuned are never paired across evaluations.
            for column in ("evaluation_id", "headline"):
                if column not in columns:
                    db.execute(f"ALTER TABLE evaluations ADD COLUMN {column} TEXT")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.db_path, timeout=30)
        db.row_factory = sqlite3.Row
        try:
            with db:
                yield db
        finally:
            db.close()

    def add_dataset(self, name: str, version: str, path: Path, fmt: str, counts: dict[str, int], source: str) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO datasets VALUES (?,?,?,?,?,?,?)",
                (name, version, str(path), fmt, json.dumps(counts), source, now()),
            )

    def dataset(self, name: str) -> dict[str, Any] | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM datasets WHERE name = ?", (name,)).fetchone()
        return dict(row) if row else None

    def start_run(self, run_id: str, name: str | None, base_model: str, method: str, dataset: str, dataset_version: str, path: Path) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO runs (id, name, base_model, method, dataset, dataset_version, status, path, created)"
                " VALUES (?,?,?,?,?,?,?,?,?)",
                (run_id, name, base_model, method, dataset, dataset_version, "running", str(path), now()),
            )

    def mark_running(self, run_id: str) -> None:
        """A resumed run is running again."""
        with self._connect() as db:
            db.execute("UPDATE runs SET status = 'running', finished = NULL WHERE id = ?", (run_id,))

    def finish_run(self, run_id: str, status: str, best_val_loss: float | None) -> None:
        with self._connect() as db:
            db.execute("UPDATE runs SET status = ?, best_val_loss = ?, finished = ? WHERE id = ?", (status, best_val_loss, now(), run_id))

    def add_evaluation(self, run_id: str, model_id: str, split: str, n: int, metrics: dict[str, float]) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT INTO evaluations (run_id, model_id, split, n, metrics, created) VALUES (?,?,?,?,?,?)",
                (run_id, model_id, split, n, json.dumps(metrics), now()),
            )

    def add_evaluations(self, run_id: str, split: str, evaluation_id: str, headline: str, rows: list[tuple[str, int, dict[str, float]]]) -> None:
        """One evaluation's rows (model id, n, metrics), in one transaction under one evaluation id."""
        with self._connect() as db:
            db.executemany(
                "INSERT INTO evaluations (run_id, model_id, split, n, metrics, created, evaluation_id, headline) VALUES (?,?,?,?,?,?,?,?)",
                [(run_id, model_id, split, n, json.dumps(metrics), now(), evaluation_id, headline) for model_id, n, metrics in rows],
            )

    def runs(self) -> list[dict[str, Any]]:
        with self._connect() as db:
            return [dict(r) for r in db.execute("SELECT * FROM runs ORDER BY created DESC, id DESC")]

    def run(self, run_id: str) -> dict[str, Any] | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return dict(row) if row else None

    def evaluations(self, run_id: str) -> list[dict[str, Any]]:
        """The rows of the latest evaluation of each split: models evaluated together, never one model's
        latest row beside another's from an earlier evaluation. (Rows written before evaluation ids
        existed: the latest per model, as then.)"""
        with self._connect() as db:
            latest = db.execute(
                "SELECT split, evaluation_id FROM evaluations WHERE id IN (SELECT MAX(id) FROM evaluations WHERE run_id = ? GROUP BY split)",
                (run_id,),
            ).fetchall()
            rows = []
            for split, evaluation_id in latest:
                if evaluation_id is None:
                    rows += db.execute(
                        "SELECT * FROM evaluations WHERE id IN (SELECT MAX(id) FROM evaluations WHERE run_id = ? AND split = ?"
                        " AND evaluation_id IS NULL GROUP BY model_id)", (run_id, split)).fetchall()
                else:
                    rows += db.execute("SELECT * FROM evaluations WHERE run_id = ? AND evaluation_id = ?", (run_id, evaluation_id)).fetchall()
        rows.sort(key=lambda r: (r["split"], r["model_id"]))
        return [{**dict(r), "metrics": json.loads(r["metrics"])} for r in rows]
