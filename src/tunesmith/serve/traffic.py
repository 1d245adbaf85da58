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
    """Oldest first: names are traffic-<UTC yyyymmdd-HHMMSS>-<n>.jsonl, so name order is time order."""
    folder = traffic_dir(home)
    return sorted(folder.glob("traffic-*.jsonl")) if folder.is_dir() else []


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
    a power cut may lose the last lines, never the server's throughput."""

    def __init__(self, home: Path, *, max_bytes: int = 64 * 1024 * 1024):
        self.folder = traffic_dir(home)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._path: Path | None = None

    def _current(self) -> Path:
        if self._path is None or (self._path.exists() and self._path.stat().st_size >= self.max_bytes):
            self.folder.mkdir(parents=True, exist_ok=True)
            stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
            n = 0
            while (candidate := self.folder / f"traffic-{stamp}-{n}.jsonl").exists():
                n += 1
            self._path = candidate
        return self._path

    def write(self, record: TrafficRecord) -> None:
        line = record.model_dump_json(exclude_none=True) + "\n"
        with self._lock:
            with open(self._current(), "a", encoding="utf-8") as handle:
                handle.write(line)
