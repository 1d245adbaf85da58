"""Read a user's file and turn each record into an Example, naming the line of every problem.

Formats (auto-detected from the record's keys, or named): chat `messages` (OpenAI style),
`prompt`/`completion`, `input_text`/`output_text` (Vertex AI style).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from tunesmith.data.example import Example, Message
from tunesmith.errors import ProblemList, UserError

FormatName = Literal["messages", "prompt_completion", "input_output"]
FORMAT_KEYS: dict[str, tuple[str, ...]] = {
    "messages": ("messages",),
    "prompt_completion": ("prompt", "completion"),
    "input_output": ("input_text", "output_text"),
}
MAX_PROBLEMS_SHOWN = 20


def read_records(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield (line number, parsed record); a line that is not JSON yields a UserError instead."""
    if not path.is_file():
        raise UserError(f"no such file: {path}", fix="check the path")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as handle:
            for row_number, row in enumerate(csv.DictReader(handle), start=2):
                yield row_number, row
        return
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"not valid JSON: {exc}", where=str(path), fix="a .json file holds one array of records") from None
        if not isinstance(data, list):
            raise UserError("a .json file must hold an array of records", where=str(path), fix="use JSONL for one record per line")
        yield from enumerate(data, start=1)
        return
    with path.open("rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8-sig" if line_number == 1 else "utf-8").strip()
            except UnicodeDecodeError:
                yield line_number, UserError("line is not UTF-8 text", fix="re-save the file as UTF-8")
                continue
            if not text:
                continue
            try:
                yield line_number, json.loads(text)
            except json.JSONDecodeError as exc:
                yield line_number, UserError(f"not valid JSON ({exc.msg} at column {exc.colno})", fix="each line must be one JSON object")


def detect_format(record: Any) -> FormatName | None:
    if not isinstance(record, dict):
        return None
    for name, keys in FORMAT_KEYS.items():
        if all(key in record for key in keys):
            return name  # type: ignore[return-value]
    return None


def _text(record: dict, key: str) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"field '{key}' must be a non-empty string")
    return value


def _from_messages(record: dict) -> list[Message]:
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("field 'messages' must be a non-empty list of {role, content} objects")
    out = []
    for index, message in enumerate(messages):
        try:
            out.append(Message.model_validate(message))
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "message"
            raise ValueError(f"messages[{index}].{field}: {first['msg']}") from None
    return out


def _from_prompt_completion(record: dict) -> list[Message]:
    return [Message(role="user", content=_text(record, "prompt")), Message(role="assistant", content=_text(record, "completion"))]


def _from_input_output(record: dict) -> list[Message]:
    return [Message(role="user", content=_text(record, "input_text")), Message(role="assistant", content=_text(record, "output_text"))]


_CONVERTERS: dict[str, Callable[[dict], list[Message]]] = {
    "messages": _from_messages,
    "prompt_completion": _from_prompt_completion,
    "input_output": _from_input_output,
}


def to_example(record: Any, fmt: FormatName, example_id: str) -> Example:
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    if detect_format(record) != fmt:
        raise ValueError(f"record is not in the file's format '{fmt}' (needs keys {', '.join(FORMAT_KEYS[fmt])})")
    messages = _CONVERTERS[fmt](record)
    if not any(m.role == "assistant" for m in messages):
        raise ValueError("example has no assistant message to learn from")
    label = record.get("label")
    meta = record.get("meta") if isinstance(record.get("meta"), dict) else {}
    return Example(id=str(record.get("id") or example_id), messages=messages, label=None if label is None else str(label), meta=meta)


def load_examples(path: Path, fmt: FormatName | None = None) -> tuple[list[Example], FormatName]:
    """Read every record; report every bad line at once rather than stopping at the first."""
    examples: list[Example] = []
    problems: list[str] = []
    for line, record in read_records(path):
        if isinstance(record, UserError):
            problems.append(f"{path}:{line}: {record}")
            continue
        fmt = fmt or detect_format(record)
        if fmt is None:
            problems.append(f"{path}:{line}: unknown format (keys: {sorted(record) if isinstance(record, dict) else type(record).__name__})")
            continue
        try:
            examples.append(to_example(record, fmt, example_id=f"{path.stem}-{line}"))
        except ValueError as exc:
            problems.append(f"{path}:{line}: {exc}")
    if problems:
        shown = problems[:MAX_PROBLEMS_SHOWN] + ([f"... and {len(problems) - MAX_PROBLEMS_SHOWN} more"] if len(problems) > MAX_PROBLEMS_SHOWN else [])
        raise ProblemList(f"{len(problems)} problem(s) in {path}", shown, fix="fix the lines above, or name the format with --format " + "|".join(FORMAT_KEYS))
    if not examples or fmt is None:
        raise UserError(f"{path} holds no examples", fix="add at least one record, e.g. {\"messages\": [...]}")
    return examples, fmt
