"""The service's durable state in the workspace's api.db (SQLite, WAL): uploaded files, fine-tuning
jobs with their worker leases, job events and checkpoints. api.db is the truth for the service; the
run folders stay the truth for training (events and checkpoints are copied from their metrics.jsonl,
keyed so a copy made twice is one row).

Every write is one transaction. Uploaded bytes live under workspace.home/files/<server-chosen id>,
written under a temporary name and renamed when complete: a file row exists only for whole files."""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from tunesmith.workspace import Workspace

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, bytes INTEGER NOT NULL, created_at INTEGER NOT NULL,
    filename TEXT NOT NULL, purpose TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'processed');
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, created_at INTEGER NOT NULL, model TEXT NOT NULL,
    training_file TEXT NOT NULL, validation_file TEXT, suffix TEXT, seed INTEGER NOT NULL, metadata TEXT,
    hyperparameters TEXT NOT NULL, method TEXT NOT NULL, budget TEXT, status TEXT NOT NULL, error TEXT,
    fine_tuned_model TEXT, finished_at INTEGER, trained_tokens INTEGER, estimated_finish INTEGER,
    result_files TEXT NOT NULL DEFAULT '[]', evaluation TEXT, run_id TEXT, requested TEXT,
    spec TEXT NOT NULL, model_deleted INTEGER NOT NULL DEFAULT 0, worker TEXT, lease_until REAL, handle TEXT,
    attempts INTEGER NOT NULL DEFAULT 0, started_at REAL, first_step_at REAL);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status);
CREATE TABLE IF NOT EXISTS job_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, job_id TEXT NOT NULL, created_at INTEGER NOT NULL,
    level TEXT NOT NULL, message TEXT NOT NULL, type TEXT NOT NULL, data TEXT);
CREATE INDEX IF NOT EXISTS job_events_job ON job_events(job_id, seq);
CREATE TABLE IF NOT EXISTS job_checkpoints (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, job_id TEXT NOT NULL, step INTEGER NOT NULL,
    created_at INTEGER NOT NULL, metrics TEXT NOT NULL, fine_tuned_model_checkpoint TEXT NOT NULL, UNIQUE(job_id, step));
"""

JSON_COLUMNS = ("metadata", "hyperparameters", "method", "budget", "error", "result_files", "evaluation", "data", "metrics", "spec")
# A job is waiting or being worked on in these; the others are final (paused waits for a resume).
ACTIVE = ("validating_files", "queued", "running")
FINAL = ("succeeded", "failed", "cancelled")


def api_db(workspace: Workspace) -> Path:
    return workspace.home / "api.db"


def files_dir(workspace: Workspace) -> Path:
    return workspace.home / "files"


def new_id(prefix: str) -> str:
    """Server-chosen ids, as OpenAI spells them (file-..., ftjob-..., ftevent-..., ftckpt-...)."""
    return f"{prefix}-{secrets.token_hex(12)}"


def now() -> int:
    return int(time.time())


def _row(row: sqlite3.Row | None) -> dict[str, Any] | None:
    if row is None:
        return None
    found = dict(row)
    for key in JSON_COLUMNS:
        if key in found and found[key] is not None:
            found[key] = json.loads(found[key])
    return found


def _dump(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (dict, list)) else value


class ApiStore:
    """Files, jobs, events and checkpoints of one workspace. A connection per call: cheap in SQLite, and
    safe across the API's threads and the worker processes."""

    def __init__(self, workspace: Workspace):
        self.workspace, self.path, self.files = workspace, api_db(workspace), files_dir(workspace)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = self._open()
        try:
            db.executescript(SCHEMA)  # its own transaction
        finally:
            db.close()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        return db

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """One transaction: committed when the block ends, rolled back when it raises."""
        db = self._open()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    # ------------------------------------------------------------ files

    def save_file(self, stream: BinaryIO, filename: str, purpose: str, limit: int) -> dict[str, Any] | None:
        """Copy an upload under a new id; None (and nothing kept) when it is over `limit` bytes."""
        self.files.mkdir(parents=True, exist_ok=True)
        file_id = new_id("file")
        part, size = self.files / f".{file_id}.part", 0
        try:
            with part.open("wb") as out:
                while chunk := stream.read(1 << 20):
                    size += len(chunk)
                    if size > limit:
                        return None
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            part.rename(self.files / file_id)
        finally:
            part.unlink(missing_ok=True)
        row = {"id": file_id, "bytes": size, "created_at": now(), "filename": filename, "purpose": purpose, "status": "processed"}
        with self.connect() as db:
            db.execute(
                "INSERT INTO files (id, bytes, created_at, filename, purpose, status) VALUES (:id, :bytes, :created_at, :filename, :purpose, :status)", row
            )
        return row

    def sweep_partial_uploads(self) -> None:
        """Uploads cut short by a killed server: never listed, and removed when the server starts again."""
        for part in self.files.glob(".file-*.part") if self.files.is_dir() else []:
            part.unlink(missing_ok=True)

    def file(self, file_id: str) -> dict[str, Any] | None:
        with self.connect() as db:
            return _row(db.execute("SELECT * FROM files WHERE id = ?", (file_id,)).fetchone())

    def file_path(self, file_id: str) -> Path:
        """Where a listed file's bytes are: ids come from this store, never from a client's path."""
        return self.files / file_id

    def list_files(self, purpose: str | None, order: str, after: str | None, limit: int) -> tuple[list[dict[str, Any]], bool]:
        return self._page("files", "purpose = ?" if purpose else "1", (purpose,) if purpose else (), order, after, limit)

    def delete_file(self, file_id: str) -> bool:
        with self.connect() as db:
            gone = db.execute("DELETE FROM files WHERE id = ?", (file_id,)).rowcount > 0
        if gone:
            self.file_path(file_id).unlink(missing_ok=True)
        return gone

    # ------------------------------------------------------------ jobs

    def add_job(self, job: dict[str, Any]) -> dict[str, Any]:
        columns = list(job)
        with self.connect() as db:
            db.execute(f"INSERT INTO jobs ({', '.join(columns)}) VALUES ({', '.join(':' + c for c in columns)})", {k: _dump(v) for k, v in job.items()})
        found = self.job(job["id"])
        assert found is not None
        return found

    def job(self, job_id: str) -> dict[str, Any] | None:
        with self.connect() as db:
            return _row(db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def update_job(self, job_id: str, when: tuple[str, ...] = (), **fields: Any) -> bool:
        """Set fields; with `when`, only while the job's status is one of those (False if it is not)."""
        sets = ", ".join(f"{k} = :{k}" for k in fields)
        named = {**{k: _dump(v) for k, v in fields.items()}, "_job": job_id, **{f"_s{i}": s for i, s in enumerate(when)}}
        guard = f" AND status IN ({', '.join(f':_s{i}' for i in range(len(when)))})" if when else ""
        with self.connect() as db:
            return db.execute(f"UPDATE jobs SET {sets} WHERE id = :_job{guard}", named).rowcount > 0

    def list_jobs(self, metadata: dict[str, str] | None, after: str | None, limit: int) -> tuple[list[dict[str, Any]], bool]:
        where, params = "1", []
        for key, value in (metadata or {}).items():
            where += " AND json_extract(metadata, ?) = ?"
            params += [f'$."{key}"', value]
        return self._page("jobs", where, tuple(params), "desc", after, limit)

    def claim(self, worker: str, lease_s: float, statuses: tuple[str, ...]) -> dict[str, Any] | None:
        """The oldest job in `statuses` that no live worker holds, leased to `worker`: a job whose worker
        died (its lease ran out) is claimed again, and its runner resumes the run."""
        t = time.time()
        with self.connect() as db:
            marks = ", ".join("?" * len(statuses))
            row = db.execute(
                f"SELECT id FROM jobs WHERE status IN ({marks}) AND (lease_until IS NULL OR lease_until < ?) ORDER BY seq LIMIT 1", (*statuses, t)
            ).fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET worker = ?, lease_until = ?, attempts = attempts + 1 WHERE id = ?", (worker, t + lease_s, row["id"]))
        return self.job(row["id"])

    def renew(self, job_id: str, worker: str, lease_s: float) -> bool:
        """Extend a lease this worker holds (False: another worker took the job over)."""
        with self.connect() as db:
            return db.execute("UPDATE jobs SET lease_until = ? WHERE id = ? AND worker = ?", (time.time() + lease_s, job_id, worker)).rowcount > 0

    def release(self, job_id: str, worker: str) -> None:
        with self.connect() as db:
            db.execute("UPDATE jobs SET worker = NULL, lease_until = NULL, handle = NULL WHERE id = ? AND worker = ?", (job_id, worker))

    # ------------------------------------------------------------ events and checkpoints

    def add_event(self, job_id: str, key: str, message: str, *, level: str = "info", type: str = "message", data: Any = None) -> None:
        """One event; `key` makes it idempotent (the same step's metrics copied twice are one event)."""
        with self.connect() as db:
            db.execute(
                "INSERT OR IGNORE INTO job_events (id, job_id, created_at, level, message, type, data) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (f"ftevent-{job_id.removeprefix('ftjob-')}-{key}", job_id, now(), level, message, type, _dump(data)),
            )

    def list_events(self, job_id: str, after: str | None, limit: int) -> tuple[list[dict[str, Any]], bool]:
        return self._page("job_events", "job_id = ?", (job_id,), "desc", after, limit)

    def add_checkpoint(self, job_id: str, step: int, metrics: dict[str, Any], model_id: str) -> None:
        with self.connect() as db:
            db.execute(
                "INSERT OR IGNORE INTO job_checkpoints (id, job_id, step, created_at, metrics, fine_tuned_model_checkpoint) VALUES (?, ?, ?, ?, ?, ?)",
                (f"ftckpt-{job_id.removeprefix('ftjob-')}-{step}", job_id, step, now(), json.dumps(metrics), model_id),
            )

    def list_checkpoints(self, job_id: str, after: str | None, limit: int) -> tuple[list[dict[str, Any]], bool]:
        return self._page("job_checkpoints", "job_id = ?", (job_id,), "desc", after, limit)

    def checkpoint_by_model(self, model_id: str) -> dict[str, Any] | None:
        with self.connect() as db:
            return _row(db.execute("SELECT * FROM job_checkpoints WHERE fine_tuned_model_checkpoint = ?", (model_id,)).fetchone())

    def job_by_model(self, model_id: str) -> dict[str, Any] | None:
        with self.connect() as db:
            return _row(db.execute("SELECT * FROM jobs WHERE fine_tuned_model = ?", (model_id,)).fetchone())

    def fine_tuned_models(self) -> list[dict[str, Any]]:
        with self.connect() as db:
            return [_row(r) for r in db.execute("SELECT * FROM jobs WHERE fine_tuned_model IS NOT NULL ORDER BY seq").fetchall()]  # type: ignore[misc]

    # ------------------------------------------------------------ pages

    def _page(self, table: str, where: str, params: tuple, order: str, after: str | None, limit: int) -> tuple[list[dict[str, Any]], bool]:
        """OpenAI's cursor pages: up to `limit` rows after the row whose id is `after`, and whether more follow.
        An unknown cursor gives an empty page (the row was deleted; there is nothing after it to find)."""
        direction, compare = ("DESC", "<") if order == "desc" else ("ASC", ">")
        cursor, extra = "", ()
        if after is not None:
            cursor, extra = f" AND seq {compare} COALESCE((SELECT seq FROM {table} WHERE id = ?), {'-1' if compare == '<' else '1e18'})", (after,)
        with self.connect() as db:
            rows = db.execute(f"SELECT * FROM {table} WHERE {where}{cursor} ORDER BY seq {direction} LIMIT ?", (*params, *extra, limit + 1)).fetchall()
        return [_row(r) for r in rows[:limit]], len(rows) > limit  # type: ignore[misc]
