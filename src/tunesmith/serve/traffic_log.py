"""Logging served traffic without slowing the server down: requests are queued as they finish and a
background thread scrubs them (the data pipeline's own PII detectors, data/pii.py, a batch at a
time) and appends them to <home>/traffic/ (serve/traffic.py).

Nothing on the request path does more than put a record on a bounded queue: when the queue is full
(the scrub falls behind a burst) the record is counted as dropped (`tunesmith_traffic_dropped_total`
on /metrics) and the request goes on; serving never waits for the log. `close()` drains the queue,
so a server that shuts down cleanly loses nothing.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.serve.traffic import LogMode, TrafficRecord, TrafficWriter

log = logging.getLogger("tunesmith.serve")

LOG_MODES = ("off", "redacted", "full")
BATCH = 64  # records scrubbed together: spaCy's NER is several times faster per text in batches
_STOP = object()


@dataclass
class LogSettings:
    """How `tunesmith serve --log ...` keeps served traffic."""

    mode: LogMode = "redacted"
    max_bytes: int = 64 * 1024 * 1024  # a new file past this size
    keep_files: int | None = None  # at most this many files (oldest removed first)
    keep_days: float | None = 30.0  # files last written longer ago than this are removed
    queue_size: int = 10_000  # records waiting for the scrub; past it they are dropped and counted
    ner: bool = True  # also find names with spaCy NER, as `data prepare` does by default


def check_mode(mode: str) -> LogMode:
    from tunesmith.errors import UserError

    if mode not in LOG_MODES:
        raise UserError(f"unknown log mode '{mode}'", where="--log", fix="use off (nothing kept), redacted (PII removed; the default) or full")
    return mode  # type: ignore[return-value]


def log_settings(mode: str = "redacted", *, max_mb: float = 64, keep_files: int | None = None, keep_days: float | None = 30.0) -> LogSettings:
    """Settings from the options of `serve`/`api` (and their Python API), checked before any model loads."""
    from tunesmith.errors import UserError

    if max_mb <= 0:
        raise UserError(f"--log-max-mb {max_mb} is not positive", where="--log-max-mb", fix="give the size in MB at which a new log file starts, e.g. 64")
    if keep_files is not None and keep_files < 1:
        raise UserError(f"--log-keep-files {keep_files} would keep no file", where="--log-keep-files", fix="give 1 or more, or leave it out")
    if keep_days is not None and keep_days <= 0:
        raise UserError(f"--log-keep-days {keep_days} is not positive", where="--log-keep-days", fix="give a number of days, e.g. 30")
    return LogSettings(mode=check_mode(mode), max_bytes=int(max_mb * 2**20), keep_files=keep_files, keep_days=keep_days)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str):
                yield key
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


# The fields that hold what users and the model wrote; the rest (ids, counts, the model's name) do not.
TEXT_FIELDS = ("messages", "prompt", "answer", "tool_calls", "error")


class TrafficLog:
    """The served-traffic log of one server process (shared by every model it serves)."""

    def __init__(self, home: Path, settings: LogSettings | None = None):
        self.settings = settings or LogSettings()
        if self.settings.mode == "off":
            raise ValueError("a TrafficLog is for --log redacted or full; with off, build none")
        s = self.settings
        self.writer = TrafficWriter(home, max_bytes=s.max_bytes, keep_files=s.keep_files, keep_days=s.keep_days)
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=s.queue_size)
        self.dropped = 0  # records the full queue turned away
        self.written = 0
        self.failed = 0  # records lost to an error in the scrub or the write (logged)
        self.cpu_s = 0.0  # CPU time the log thread spent scrubbing and writing: what logging costs the server
        self._scrubber: Any = None
        self._closed = False
        self.thread = threading.Thread(target=self._loop, name="tunesmith-traffic-log", daemon=True)
        self.thread.start()
        atexit.register(self.close)  # a server stopped without close() still writes what it queued

    @property
    def mode(self) -> LogMode:
        return self.settings.mode

    def submit(self, record: TrafficRecord) -> None:
        """Queue a record for the scrub and the file; never blocks (a full queue drops and counts it)."""
        if self._closed:
            return
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1

    def close(self, timeout: float = 60.0) -> None:
        """Write everything queued, then stop the thread."""
        if self._closed:
            return
        self._closed = True
        self.queue.put(_STOP)
        self.thread.join(timeout)
        atexit.unregister(self.close)

    def _loop(self) -> None:
        while True:
            batch, stop = [self.queue.get()], False
            while len(batch) < BATCH:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            if any(item is _STOP for item in batch):
                stop = True
                batch = [item for item in batch if item is not _STOP]
                while True:  # what arrived before close() still goes out
                    try:
                        item = self.queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is not _STOP:
                        batch.append(item)
            for start in range(0, len(batch), BATCH):
                self._write(batch[start : start + BATCH])
            if stop:
                return

    def _write(self, batch: list[TrafficRecord]) -> None:
        if not batch:
            return
        started = time.thread_time()
        try:
            records = self.scrub(batch) if self.mode == "redacted" else [r.model_copy(update={"log_mode": "full"}) for r in batch]
            self.writer.write_many(records)
            self.written += len(records)
        except Exception:  # the log must never take the server down: say so and go on
            self.failed += len(batch)
            log.exception("could not write %d served-traffic record(s)", len(batch))
        finally:
            self.cpu_s += time.thread_time() - started

    def scrub(self, batch: list[TrafficRecord]) -> list[TrafficRecord]:
        """Every text field of every record with its PII replaced by typed placeholders (`<EMAIL>`),
        found in one batched pass of the detectors over the whole batch."""
        if self._scrubber is None:
            from tunesmith.data.pii import Scrubber

            self._scrubber = Scrubber("redact", ner=self.settings.ner)
        scrubber = self._scrubber
        payloads = [{name: getattr(r, name) for name in TEXT_FIELDS if getattr(r, name) is not None} for r in batch]
        cleaned = scrubber.scrub_value(payloads)  # one batched scan of every string, then the replacements
        out = []
        for record, payload, clean in zip(batch, payloads, cleaned, strict=True):
            found = sum(len(scrubber.spans(text)) for text in _strings(payload))
            out.append(record.model_copy(update={**clean, "redactions": found, "log_mode": "redacted"}))
        return out


@dataclass
class Trace:
    """One request as the log will keep it, filled in as the request is read and answered."""

    endpoint: str  # "chat.completions" | "completions"
    arrived: float = field(default_factory=time.time)
    started: float = field(default_factory=time.perf_counter)
    model: str = ""
    run_id: str | None = None
    checkpoint: str | None = None
    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None
    tools: list[dict[str, Any]] | None = None
    max_tokens: int | None = None

    def read(self, body: Any) -> None:
        """What the client sent, taken before it is checked: a refused request is logged with what it asked."""
        if not isinstance(body, dict):
            return
        model = body.get("model")
        self.model = model if isinstance(model, str) else ""
        messages = body.get("messages")
        if isinstance(messages, list) and all(isinstance(m, dict) for m in messages):
            self.messages = messages
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            prompt = prompt[0]  # a record holds one request's first prompt and first answer
        self.prompt = prompt if isinstance(prompt, str) else None
        tools = body.get("tools")
        self.tools = tools if isinstance(tools, list) and all(isinstance(t, dict) for t in tools) else None
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        self.max_tokens = limit if isinstance(limit, int) and not isinstance(limit, bool) else None

    def serving(self, served: Any, max_tokens: int | None) -> None:
        self.run_id, self.checkpoint, self.max_tokens = served.run_id, served.checkpoint, max_tokens

    def record(self, response_id: str, **answered: Any) -> TrafficRecord:
        """The record, with what the answer was (answer, tool_calls, tokens, finish_reason, confidence, status, error)."""
        return TrafficRecord(
            id=response_id,
            time=self.arrived,
            model=self.model,
            run_id=self.run_id,
            checkpoint=self.checkpoint,
            endpoint=self.endpoint,  # type: ignore[arg-type]
            messages=self.messages,
            prompt=self.prompt,
            tools=self.tools,
            max_tokens=self.max_tokens,
            latency_ms=round((time.perf_counter() - self.started) * 1000, 2),
            **answered,
        )


def open_log(home: Path, settings: LogSettings | None) -> TrafficLog | None:
    """The log for these settings, or None when they say off."""
    settings = settings or LogSettings()
    check_mode(settings.mode)
    return None if settings.mode == "off" else TrafficLog(home, settings)
