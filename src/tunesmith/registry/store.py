"""The registry: a SQLite index of datasets, runs and evaluations. The folders stay the truth;
the index makes them listable and comparable across iterations."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tunesmith.errors import UserError
from tunesmith.registry.runfolder import config_data

_SCHEMA = """
CREATE TABLE IF NOT EXISTS datasets (
  name TEXT PRIMARY KEY, version TEXT NOT NULL, path TEXT NOT NULL, format TEXT NOT NULL,
  counts TEXT NOT NULL, source TEXT NOT NULL, created TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
  id TEXT PRIMARY KEY, name TEXT, base_model TEXT NOT NULL, method TEXT NOT NULL,
  dataset TEXT NOT NULL, dataset_version TEXT NOT NULL, status TEXT NOT NULL, path TEXT NOT NULL,
  best_val_loss REAL, created TEXT NOT NULL, finished TEXT, owner TEXT);
CREATE TABLE IF NOT EXISTS evaluations (
  id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, model_id TEXT NOT NULL,
  split TEXT NOT NULL, n INTEGER NOT NULL, metrics TEXT NOT NULL, created TEXT NOT NULL,
  evaluation_id TEXT, headline TEXT);
"""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


REINDEX = "tunesmith runs reindex"
# Where a dataset version came from (its manifest says the same; docs/monitoring.md "Lineage"):
# source_kind file | logs | augment, parent_dataset NAME@VERSION, traffic_window as JSON.
LINEAGE_COLUMNS = ("source_kind", "parent_dataset", "traffic_window")


class RegistryUnusable(UserError):
    """The registry file cannot be read or written; the run and dataset folders are untouched."""

    def __init__(self, db_path: Path, exc: sqlite3.Error):
        text = str(exc)
        if isinstance(exc, sqlite3.OperationalError) and "locked" in text:
            self.exit_code = 1
            super().__init__(
                f"the registry {db_path} is locked by another process ({text})", fix="wait for the other tunesmith command to finish, then try again"
            )
        elif isinstance(exc, sqlite3.OperationalError) and ("full" in text or "readonly" in text or "unable to open" in text):
            self.exit_code = 1
            super().__init__(f"the registry {db_path} cannot be written ({text})", fix="free disk space or make the folder writable, then try again")
        else:  # damaged bytes, a file that is not SQLite, a table with the wrong shape
            super().__init__(
                f"the registry {db_path} is damaged ({text})",
                fix=f"run `{REINDEX}`: it keeps the damaged file beside it and rebuilds the registry from the run and dataset folders",
            )


def _add_column(db: sqlite3.Connection, table: str, column: str) -> None:
    try:
        db.execute(f"ALTER TABLE {table} ADD COLUMN {column} TEXT")
    except sqlite3.OperationalError as exc:  # another command added it a moment ago
        if "duplicate column" not in str(exc):
            raise


class Registry:
    def __init__(self, db_path: Path):
        self.db_path = db_path
        missing = not db_path.exists()
        with self._connect() as db:
            db.executescript(_SCHEMA)
            columns = {r["name"] for r in db.execute("PRAGMA table_info(evaluations)")}
            # Added columns (older registries gain them, their rows keep NULL): the rows one `tunesmith eval`
            # wrote share an evaluation id, so base and tuned are never paired across evaluations.
            for column in ("evaluation_id", "headline"):
                if column not in columns:
                    _add_column(db, "evaluations", column)
            run_columns = {row["name"] for row in db.execute("PRAGMA table_info(runs)")}
            for column in ("owner", "parent_run"):  # a registry from before run owners, or before lineage
                if column not in run_columns:
                    _add_column(db, "runs", column)
            dataset_columns = {row["name"] for row in db.execute("PRAGMA table_info(datasets)")}
            for column in LINEAGE_COLUMNS:
                if column not in dataset_columns:
                    _add_column(db, "datasets", column)
        if missing and _has_folders(db_path.parent):
            # The folders are the truth and the index is gone (deleted, or a copied workspace): rebuild it, and say so.
            from tunesmith.ui import console

            counts = reindex(db_path.parent)
            console.print(f"[yellow]{db_path} was missing[/]: rebuilt it from the folders ({counts['runs']} runs, {counts['datasets']} datasets)")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            db = sqlite3.connect(self.db_path, timeout=30)
        except sqlite3.Error as exc:
            raise RegistryUnusable(self.db_path, exc) from None
        db.row_factory = sqlite3.Row
        try:
            with db:
                yield db
        except sqlite3.Error as exc:
            raise RegistryUnusable(self.db_path, exc) from None
        finally:
            db.close()

    def add_dataset(
        self,
        name: str,
        version: str,
        path: Path,
        fmt: str,
        counts: dict[str, int],
        source: str,
        *,
        source_kind: str = "file",
        parent_dataset: str | None = None,
        traffic_window: dict[str, Any] | None = None,
    ) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO datasets (name, version, path, format, counts, source, created, source_kind, parent_dataset, traffic_window)"
                " VALUES (?,?,?,?,?,?,?,?,?,?)",
                (name, version, str(path), fmt, json.dumps(counts), source, now(), source_kind, parent_dataset, _json_or_none(traffic_window)),
            )

    def dataset(self, name: str) -> dict[str, Any] | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM datasets WHERE name = ?", (name,)).fetchone()
        return dict(row) if row else None

    def start_run(
        self, run_id: str, name: str | None, base_model: str, method: str, dataset: str, dataset_version: str, path: Path, parent_run: str | None = None
    ) -> None:
        from tunesmith.workspace import owner

        with self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO runs (id, name, base_model, method, dataset, dataset_version, status, path, created, owner, parent_run)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (run_id, name, base_model, method, dataset, dataset_version, "running", str(path), now(), json.dumps(owner()), parent_run),
            )

    def mark_running(self, run_id: str) -> None:
        """A resumed run is running again, in this process."""
        from tunesmith.workspace import owner

        with self._connect() as db:
            db.execute("UPDATE runs SET status = 'running', finished = NULL, owner = ? WHERE id = ?", (json.dumps(owner()), run_id))

    def forget_run(self, run_id: str) -> None:
        """A run that never started (bad input found after its row was written) leaves no row."""
        with self._connect() as db:
            db.execute("DELETE FROM runs WHERE id = ?", (run_id,))

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
                        " AND evaluation_id IS NULL GROUP BY model_id)",
                        (run_id, split),
                    ).fetchall()
                else:
                    rows += db.execute("SELECT * FROM evaluations WHERE run_id = ? AND evaluation_id = ?", (run_id, evaluation_id)).fetchall()
        rows.sort(key=lambda r: (r["split"], r["model_id"]))
        return [{**dict(r), "metrics": json.loads(r["metrics"])} for r in rows]


# ---------------------------------------------------------------- rebuilding the index from the folders


def _json_or_none(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _has_folders(home: Path) -> bool:
    return any((home / "runs").glob("*/run.json")) or any((home / "datasets").glob("*/manifest.json"))


def _mtime(path: Path) -> str:
    return datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat(timespec="seconds")


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _dataset_rows(home: Path, skipped: list[str]) -> list[tuple]:
    rows = []
    for manifest in sorted((home / "datasets").glob("*/manifest.json")):
        try:
            m = _read_json(manifest)
            lineage = (m.get("source_kind") or "file", m.get("parent_dataset"), _json_or_none(m.get("traffic_window")))
            rows.append((m["name"], m["version"], str(manifest.parent), m["format"], json.dumps(m["counts"]), m["source"], _mtime(manifest), *lineage))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            skipped.append(f"{manifest}: {exc}")
    return rows


def _run_rows(home: Path, skipped: list[str]) -> tuple[list[tuple], list[tuple]]:

    runs, evaluations = [], []
    for info_path in sorted((home / "runs").glob("*/run.json")):
        folder = info_path.parent
        try:
            info = _read_json(info_path)
            config = folder / "config.yaml"
            spec = config_data(folder) if config.is_file() else {}
            first = min((p for p in (folder / "dataset.json", config, info_path) if p.is_file()), key=lambda p: p.stat().st_mtime)
            finished = None if info["status"] == "running" else _mtime(info_path)
            runs.append(
                (
                    info["run_id"],
                    (spec or {}).get("name"),
                    info["base_model"],
                    info["method"],
                    info["dataset"],
                    info["dataset_version"],
                    info["status"],
                    str(folder),
                    info.get("best_val_loss"),
                    _mtime(first),
                    finished,
                    json.dumps(info.get("owner")) if info.get("owner") else None,
                    info.get("parent_run"),
                )
            )
        except (OSError, ValueError, KeyError, TypeError, UserError) as exc:
            skipped.append(f"{info_path}: {exc}")
            continue
        covered = _kept_evaluations(folder, info["run_id"], evaluations, skipped)
        report_path = folder / "eval" / "report.json"
        try:
            report = _read_json(report_path) if report_path.is_file() else {}
        except (OSError, ValueError) as exc:
            skipped.append(f"{report_path}: {exc}")
            continue
        for split, models in report.items():
            if not isinstance(models, dict) or split in covered:
                continue  # a split with kept evaluations is indexed from them, with their ids and headline
            for model_id, result in models.items():
                if not (isinstance(result, dict) and isinstance(result.get("metrics"), dict)):
                    continue  # "comparisons", "forgetting" and other summaries are not one model's scores on one split
                answers = folder / "eval" / f"{split}-{model_id}.jsonl"
                n = result["metrics"].get("n") or (sum(1 for line in answers.open(encoding="utf-8") if line.strip()) if answers.is_file() else 0)
                evaluations.append((info["run_id"], model_id, split, int(n), json.dumps(result["metrics"]), _mtime(report_path), None, None))
    return runs, evaluations


def _kept_evaluations(folder: Path, run_id: str, evaluations: list[tuple], skipped: list[str]) -> set[str]:
    """Rows of every evaluation kept under eval/evaluations/<id>/ (eval/results.py), oldest first, so
    the latest stays the latest; returns the splits they cover."""
    records = []
    for path in (folder / "eval" / "evaluations").glob("*/evaluation.json"):
        try:
            records.append(_read_json(path))
        except (OSError, ValueError) as exc:
            skipped.append(f"{path}: {exc}")
    covered = set()
    for record in sorted((r for r in records if isinstance(r, dict)), key=lambda r: str(r.get("created"))):
        try:
            headline = (record.get("headline") or {}).get("metric")
            for model_id, result in record["models"].items():
                metrics = result["metrics"]
                evaluations.append(
                    (run_id, model_id, record["split"], int(metrics.get("n", 0)), json.dumps(metrics), record["created"], record["id"], headline)
                )
            covered.add(record["split"])
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            skipped.append(f"{folder / 'eval' / 'evaluations' / str(record.get('id'))}: {exc!r}")
    return covered


def reindex(home: Path) -> dict[str, Any]:
    """Rebuild home/registry.db from the run and dataset folders (the truth): written beside it and
    renamed into place, so a reader sees the old index or the new one. A damaged old file is kept as
    registry.db.damaged-<time>, together with its journal."""
    db_path = home / "registry.db"
    skipped: list[str] = []
    datasets = _dataset_rows(home, skipped)
    runs, evaluations = _run_rows(home, skipped)
    staging = home / f".registry.db.rebuild-{os.getpid()}"  # two commands rebuilding at once each write their own
    for leftover in (staging, staging.with_name(staging.name + "-journal")):
        leftover.unlink(missing_ok=True)
    db = sqlite3.connect(staging)
    try:
        with db:
            db.executescript(_SCHEMA)
            for column in LINEAGE_COLUMNS:
                _add_column(db, "datasets", column)
            _add_column(db, "runs", "parent_run")
            db.executemany(
                "INSERT OR REPLACE INTO datasets (name, version, path, format, counts, source, created, source_kind, parent_dataset, traffic_window)"
                " VALUES (?,?,?,?,?,?,?,?,?,?)",
                datasets,
            )
            db.executemany(
                "INSERT OR REPLACE INTO runs (id, name, base_model, method, dataset, dataset_version, status, path, best_val_loss, created, finished, owner,"
                " parent_run) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                runs,
            )
            db.executemany(
                "INSERT INTO evaluations (run_id, model_id, split, n, metrics, created, evaluation_id, headline) VALUES (?,?,?,?,?,?,?,?)", evaluations
            )
    finally:
        db.close()
    kept = None
    if db_path.exists() and not _healthy(db_path):
        kept = db_path.with_name(f"registry.db.damaged-{datetime.now():%Y%m%d-%H%M%S}")
        os.replace(db_path, kept)
    for suffix in ("-journal", "-wal", "-shm"):  # a journal of the old file must never be replayed into the new one
        side = db_path.with_name(db_path.name + suffix)
        if side.exists():
            if kept is not None:
                os.replace(side, kept.with_name(kept.name + suffix))
            else:
                side.unlink()
    os.replace(staging, db_path)
    return {"datasets": len(datasets), "runs": len(runs), "evaluations": len(evaluations), "skipped": skipped, "kept": kept}


def _healthy(db_path: Path) -> bool:
    try:
        db = sqlite3.connect(db_path)
        try:
            return db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
        finally:
            db.close()
    except sqlite3.Error:
        return False


def missing_from_index(home: Path, registry: Registry) -> dict[str, list[str]]:
    """Run and dataset folders the registry does not list: an emptied or older registry."""
    known_runs = {r["id"] for r in registry.runs()}
    with registry._connect() as db:
        known_datasets = {row["name"] for row in db.execute("SELECT name FROM datasets")}
    return {
        "runs": sorted(p.parent.name for p in (home / "runs").glob("*/run.json") if p.parent.name not in known_runs),
        "datasets": sorted(p.parent.name for p in (home / "datasets").glob("*/manifest.json") if p.parent.name not in known_datasets),
    }
