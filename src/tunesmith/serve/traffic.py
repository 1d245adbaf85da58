"""Served traffic, as the workspace keeps it: one JSON line per answered request, under <home>/traffic/.

The record and the reader are the contract between serving (which writes) and monitoring and
`data from-logs` (which read). Files are plain JSONL so a person can read them with `jq`, and
append-only so a crash loses at most the line being written. Whatever a record holds has already
been through the PII scrub unless the server was started with `--log full`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

LogMode = Literal["off", "redacted", "full"]
TRAFFIC_DIR = "traffic"


class TrafficRecord(BaseModel):
    """One answered request. `messages`/`prompt` and `answer` are redacted unless `log_mode` is "full"."""

    model_config = ConfigDict(extra="forbid")

    id: str  # the response id the client saw (chatcmpl-..., cmpl-...)
    time: float  # unix seconds when the request arrived
    model: str  # the name the client asked for
    run_id: str | None = None  # the run behind that name, when it is one
    checkpoint: str | None = None  # e.g. "checkpoint-40" when a checkpoint was served, else None
    endpoint: Literal["chat.completions", "completions"]
    messages: list[dict[str, Any]] | None = None  # chat requests
    prompt: str | None = None  # completion requests
    tools: list[dict[str, Any]] | None = None
    answer: str | None = None  # the first choice's text; None when the request failed
    tool_calls: list[dict[str, Any]] | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    max_tokens: int | None = None  # the limit the answer ran under (to tell "cut off" from "ended")
    latency_ms: float
    finish_reason: str | None = None  # stop, length, tool_calls; None when the request failed
    confidence: float | None = None  # mean probability of the answer's tokens, when the engine reports it
    status: int = 200  # the HTTP status answered
    error: str | None = None
    redactions: int = 0  # PII spans replaced before writing
    log_mode: Literal["redacted", "full"] = "redacted"


def traffic_dir(home: Path) -> Path:
    return Path(home) / TRAFFIC_DIR


def traffic_files(home: Path) -> list[Path]:
    """Oldest first: names are traffic-<UTC yyyymmdd-HHMMSS>-<n>.jsonl, in time order by stamp, then n
    as a number (files started within one second: -2 comes before -10)."""
    folder = traffic_dir(home)
    return sorted(folder.glob("traffic-*.jsonl"), key=_file_order) if folder.is_dir() else []


def _file_order(path: Path) -> tuple[str, int, str]:
    stamp, _, n = path.stem.removeprefix("traffic-").rpartition("-")
    return (stamp, int(n), "") if n.isdigit() else (path.stem, 0, path.name)


def read_traffic(home: Path, *, model: str | None = None, since: float | None = None, until: float | None = None) -> Iterator[TrafficRecord]:
    """Records in time order. `model` matches the name asked for or the run id behind it. A line that is
    not a record (a torn last line after a crash) is skipped, never fatal: the log is evidence, not input."""
    for path in traffic_files(home):
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    record = TrafficRecord.model_validate(json.loads(line))
                except (ValueError, ValidationError):
                    continue
                if model is not None and model not in (record.model, record.run_id):
                    continue
                if since is not None and record.time < since:
                    continue
                if until is not None and record.time >= until:
                    continue
                yield record


class TrafficWriter:
    """Appends records to the current file. The serving layer owns when and how records are built and
    scrubbed; this only guarantees whole lines and a file per rotation. No fsync per line:
    a power cut may lose the last lines, never the server's throughput.

    Retention: when a new file is started (at `max_bytes`), the oldest files go while there are more
    than `keep_files`, and any whose last write is older than `keep_days`; the file being written stays."""

    def __init__(self, home: Path, *, max_bytes: int = 64 * 1024 * 1024, keep_files: int | None = None, keep_days: float | None = None):
        self.home = Path(home)
        self.folder = traffic_dir(home)
        self.max_bytes = max_bytes
        self.keep_files, self.keep_days = keep_files, keep_days
        self._lock = threading.Lock()
        self._path: Path | None = None

    def _current(self) -> Path:
        if self._path is None or (self._path.exists() and self._path.stat().st_size >= self.max_bytes):
            self.folder.mkdir(parents=True, exist_ok=True)
            stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
            # After the last number used in this second, not the first free one: retention may have removed
            # a file of this second, and reusing its number would sort the new file before older ones.
            used = [_file_order(f)[1] for f in self.folder.glob(f"traffic-{stamp}-*.jsonl")]
            if self._path is not None and _file_order(self._path)[0] == stamp:
                used.append(_file_order(self._path)[1])
            self._path = self.folder / f"traffic-{stamp}-{max(used, default=-1) + 1}.jsonl"
            self.prune()
        return self._path

    def prune(self) -> list[Path]:
        """Apply the retention settings now; the files removed."""
        files = [f for f in traffic_files(self.home) if f != self._path]
        gone: list[Path] = []
        if self.keep_days is not None:
            cutoff = time.time() - self.keep_days * 86400
            gone += [f for f in files if _mtime(f) < cutoff]
        if self.keep_files is not None:
            kept = [f for f in files if f not in gone]
            room = max(0, self.keep_files - (1 if self._path is not None else 0))
            gone += kept[: max(0, len(kept) - room)]
        for path in gone:
            path.unlink(missing_ok=True)
        return gone

    def write(self, record: TrafficRecord) -> None:
        self.write_many([record])

    def write_many(self, records: list[TrafficRecord]) -> None:
        """Whole lines, in one append; a batch never straddles a rotation by more than its own size."""
        if not records:
            return
        text = "".join(record.model_dump_json(exclude_none=True) + "\n" for record in records)
        with self._lock:
            with open(self._current(), "a", encoding="utf-8") as handle:
                handle.write(text)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time()


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def point_in_time(value: float | str | None, option: str = "--since", now: float | None = None) -> float | None:
    """Unix seconds from a number, a duration back from now ("24h", "30m", "7d", "2w") or an ISO time
    ("2026-12-01T08:00", UTC unless it says otherwise); None stays None."""
    from datetime import datetime, timezone

    from tunesmith.errors import UserError

    if value is None or isinstance(value, (int, float)):
        return None if value is None else float(value)
    text = value.strip()
    now = time.time() if now is None else now
    if text and text[-1] in _UNITS:
        try:
            return now - float(text[:-1]) * _UNITS[text[-1]]
        except ValueError:
            pass
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise UserError(
            f"{option} {value!r} is neither a duration nor a time",
            where=option,
            fix="give a duration back from now (30m, 24h, 7d) or a time (2026-12-01T08:00)",
        ) from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()
