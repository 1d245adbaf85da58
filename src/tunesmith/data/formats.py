"""Read a user's file and turn each record into an Example, naming the line of every problem.

Files: JSONL (one record a line), JSON (one array), CSV (a header row), Parquet (streamed in
batches). Formats, auto-detected from the record's keys or named: chat `messages` (OpenAI
style, optional per-message `weight` 0/1), `prompt`/`completion`, `input_text`/`output_text`
(Vertex AI style), Alpaca `instruction`/`input`/`output`, ShareGPT `conversations`
(`from`/`value`), classification `text`/`label`, and preference pairs (OpenAI's `input`/
`preferred_output`/`non_preferred_output`, and `prompt`/`chosen`/`rejected`: data/preference.py). Other key names are renamed to these with a
mapping {canonical: file's key}.
"""

from __future__ import annotations

import codecs
import csv
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from tunesmith.data.example import Example, Message, Tool
from tunesmith.data.preference import PREFERENCE_FORMATS, check_pair, pair_messages
from tunesmith.data.records import SHAREGPT_ROLES, Found, check_record
from tunesmith.data.toolcalls import check_calls, has_tools, normalise
from tunesmith.errors import ProblemList, UserError

FormatName = Literal["messages", "prompt_completion", "input_output", "alpaca", "sharegpt", "classification", "preference", "prompt_chosen_rejected"]
# Detection order matters: chat formats first, and classification last because `label` also
# rides along on records of the other formats (the demo's chat records carry one).
FORMAT_KEYS: dict[str, tuple[str, ...]] = {
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "preference": ("input", "preferred_output", "non_preferred_output"),
    "prompt_chosen_rejected": ("chosen", "rejected"),
    "alpaca": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
    "input_output": ("input_text", "output_text"),
    "classification": ("text", "label"),
}
FORMAT_NAMES: tuple[str, ...] = tuple(FORMAT_KEYS)
# Top-level keys a mapping may rename to: every format's fields plus the optional ones.
CANONICAL_KEYS = frozenset(k for keys in FORMAT_KEYS.values() for k in keys) | {"input", "prompt", "system", "id", "meta"}
PARQUET_SUFFIXES = (".parquet", ".pq")
MAX_PROBLEMS_SHOWN = 20


class RecordError(UserError):
    """A record that could not be read at all; `code` names the kind for the validator."""

    def __init__(self, code: str, message: str, *, fix: str):
        self.code = code
        super().__init__(message, fix=fix)


# ---------------------------------------------------------------- reading files


def read_records(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield (line number, parsed record); a record that cannot be read yields a RecordError instead.

    Streams JSONL, CSV and Parquet, so memory does not grow with the file; a .json array is
    read whole (it is one value), which is why JSONL is the format for large files.
    """
    if not path.is_file():
        raise UserError(f"no such file: {path}", fix="check the path")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        yield from _read_csv(path)
    elif suffix == ".json":
        yield from _read_json_array(path)
    elif suffix in PARQUET_SUFFIXES:
        yield from _read_parquet(path)
    else:
        yield from _read_jsonl(path)


def _parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        return RecordError("invalid_json", f"not valid JSON ({exc.msg} at column {exc.colno})", fix="each line must be one JSON object")
    except RecursionError:
        return RecordError("invalid_json", "JSON nested too deeply to read", fix="flatten the record")


def _read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open("rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            try:
                # A BOM on the first line and CRLF endings are what Windows editors write: not problems.
                text = raw.decode("utf-8-sig" if line_number == 1 else "utf-8").strip()
            except UnicodeDecodeError as exc:
                yield (
                    line_number,
                    RecordError("encoding", f"line is not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})", fix="re-save the file as UTF-8"),
                )
                continue
            if text:
                yield line_number, _parse_json(text)


class _DecodedLines:
    """UTF-8 lines for the csv module, remembering which physical lines held bytes that are not UTF-8."""

    def __init__(self, handle: Iterable[bytes]):
        self._lines = iter(handle)
        self.line_number = 0
        self.bad_lines: list[int] = []  # drained by the reader after every row, so it stays small

    def __iter__(self) -> _DecodedLines:
        return self

    def __next__(self) -> str:
        raw = next(self._lines)
        self.line_number += 1
        if self.line_number == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8) :]
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self.bad_lines.append(self.line_number)
            return raw.decode("utf-8", errors="replace")


def _read_csv(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open("rb") as handle:
        lines = _DecodedLines(handle)
        reader = csv.reader(lines)
        header = _csv_header(reader, lines)
        if header is None:
            return
        while True:
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield start, RecordError("invalid_csv", f"not a readable CSV row ({exc})", fix="quote fields that hold commas, quotes or line breaks")
                continue
            if lines.bad_lines:
                yield lines.bad_lines[0], RecordError("encoding", "row is not UTF-8 text", fix="re-save the file as UTF-8")
                lines.bad_lines.clear()
                continue
            if row and any(cell.strip() for cell in row):
                yield start, _csv_record(header, row)


def _csv_header(reader: Any, lines: _DecodedLines) -> list[str] | None:
    try:
        header = next(reader)
    except (StopIteration, csv.Error):
        return None
    lines.bad_lines.clear()  # a mangled header shows up as missing fields on every row instead
    return [name.strip() for name in header]


def _csv_record(header: list[str], row: list[str]) -> Any:
    if len(row) > len(header):
        return RecordError("invalid_csv", f"row has {len(row)} fields but the header names {len(header)}", fix="quote fields that hold commas")
    # A short row leaves its last columns out, so they read as missing fields rather than as "".
    return {name: _csv_value(name, value) for name, value in zip(header, row)}


def _csv_value(name: str, value: str) -> Any:
    # A chat column in CSV holds the conversation as JSON text (OpenAI preference columns too).
    if (name in ("messages", "conversations", "preferred_output", "non_preferred_output") and value.lstrip().startswith("[")) or (
        name == "input" and value.lstrip().startswith("{")
    ):
        parsed = _parse_json(value)
        return value if isinstance(parsed, RecordError) else parsed
    return value


def _read_json_array(path: Path) -> Iterator[tuple[int, Any]]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        yield raw.count(b"\n", 0, exc.start) + 1, RecordError("encoding", "file is not UTF-8 text", fix="re-save the file as UTF-8")
        text = raw.decode("utf-8-sig", errors="replace")
    yield from _json_array_items(text)


def _json_array_items(text: str) -> Iterator[tuple[int, Any]]:
    """Each element of the array with the line it starts on, so problems point at the right place."""
    decoder = json.JSONDecoder()
    position = _skip_space(text, 0)
    if position >= len(text):
        return
    if text[position] != "[":
        yield (
            _line_of(text, position),
            RecordError("data_type", "a .json file must hold one array of records", fix="wrap the records in [ ... ], or use JSONL (one record a line)"),
        )
        return
    position = _skip_space(text, position + 1)
    if text.startswith("]", position):
        return
    while position < len(text):
        line = _line_of(text, position)
        try:
            value, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as exc:
            # Named by the record's first line (where the user looks), with the exact spot in the message.
            yield (
                line,
                RecordError(
                    "invalid_json",
                    f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})",
                    fix="fix this record; the rest of the array cannot be read past it",
                ),
            )
            return
        except RecursionError:
            yield line, RecordError("invalid_json", "JSON nested too deeply to read", fix="flatten the record")
            return
        yield line, value
        position = _skip_space(text, position)
        if text.startswith(",", position):
            position = _skip_space(text, position + 1)
        elif text.startswith("]", position):
            return
        else:
            yield (
                _line_of(text, position),
                RecordError("invalid_json", "expected ',' or ']' after a record", fix="separate records with commas and close the array"),
            )
            return


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def _line_of(text: str, position: int) -> int:
    return text.count("\n", 0, position) + 1


def _read_parquet(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        yield 0, RecordError("invalid_parquet", f"not a readable Parquet file ({exc})", fix="re-export the file as Parquet, or use JSONL")
        return
    row = 0
    try:
        for batch in parquet.iter_batches(batch_size=1024):
            for record in batch.to_pylist():
                row += 1
                yield row, record
    except Exception as exc:
        yield row + 1, RecordError("invalid_parquet", f"Parquet data unreadable from this row on ({exc})", fix="re-export the file")


# ---------------------------------------------------------------- formats


_PAIR = re.compile(r"^[A-Za-z_][\w.]*=")


def expand_map_args(argv: list[str]) -> list[str]:
    """`--map prompt=question completion=answer` as `--map prompt=question --map completion=answer`.

    A list option takes one value per flag in Typer/Click, so the pairs after the first would be
    "unexpected extra arguments". Rewriting the command line once, before any command parses it,
    makes every command that takes --map read space-separated, repeated and comma-separated pairs
    alike. A `key=value` token right after a --map pair is taken as another pair, so a positional
    argument shaped like `a=b` must come before --map (or after `--`)."""
    out: list[str] = []
    in_map = False
    for index, token in enumerate(argv):
        if token == "--":
            out += argv[index:]
            return out
        if in_map and not token.startswith("-") and _PAIR.match(token):
            out += ["--map", token]
            continue
        in_map = token.startswith("--map=") or (bool(out) and out[-1] == "--map" and not token.startswith("-"))
        out.append(token)
    return out


def parse_mapping(pairs: Iterable[str]) -> dict[str, str]:
    """`canonical=file_key` pairs (also comma-separated) into a mapping; bad pairs are a usage error."""
    mapping: dict[str, str] = {}
    for chunk in pairs:
        for pair in filter(None, (p.strip() for p in chunk.split(","))):
            canonical, sep, source = pair.partition("=")
            if not sep or not canonical.strip() or not source.strip():
                raise UserError(f"--map {pair!r} is not canonical=file_key", fix="write it like --map prompt=question completion=answer")
            mapping[canonical.strip()] = source.strip()
    check_mapping(mapping)
    return mapping


def check_mapping(mapping: dict[str, str] | None) -> None:
    unknown = sorted(set(mapping or {}) - CANONICAL_KEYS)
    if unknown:
        raise UserError(
            f"cannot map to {', '.join(unknown)}: not a field tunesmith reads",
            fix=f"the left side names a canonical field ({', '.join(sorted(CANONICAL_KEYS))}); the right side the file's key",
        )


def apply_mapping(record: Any, mapping: dict[str, str] | None) -> Any:
    """The record with the file's keys renamed to canonical ones; records that are not objects pass through."""
    if not mapping or not isinstance(record, dict):
        return record
    renamed = dict(record)
    for canonical, source in mapping.items():
        if source in record:
            renamed.pop(source, None)
            renamed[canonical] = record[source]
    return renamed


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


def _scalar_text(record: dict, key: str) -> str:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, (str, int, float)) or not str(value).strip() or (isinstance(value, float) and not math.isfinite(value)):
        raise ValueError(f"field '{key}' must be a non-empty string or number (NaN, an empty spreadsheet cell, is none)")
    return str(value)


def _from_messages(record: dict) -> list[Message]:
    if has_tools(record):
        errors = [message for _, message, severity in check_calls(record) if severity == "error"]
        if errors:
            raise ValueError(errors[0])
        record = normalise(record)
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("field 'messages' must be a non-empty list of {role, content} objects")
    return [_message(message, f"messages[{index}]") for index, message in enumerate(messages)]


def _message(message: Any, where: str) -> Message:
    try:
        return Message.model_validate(message)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "message"
        raise ValueError(f"{where}.{field}: {first['msg']}") from None


def _from_sharegpt(record: dict) -> list[Message]:
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise ValueError("field 'conversations' must be a non-empty list of {from, value} objects")
    out = []
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict) or turn.get("from") not in SHAREGPT_ROLES:
            raise ValueError(f"conversations[{index}].from must be one of {', '.join(SHAREGPT_ROLES)}")
        fields = {"role": SHAREGPT_ROLES[turn["from"]], "content": turn.get("value")}
        if "weight" in turn:
            fields["weight"] = turn["weight"]
        extra = set(turn) - {"from", "value", "weight"}
        fields.update({key: turn[key] for key in extra})  # left in so Message refuses them by name
        out.append(_message(fields, f"conversations[{index}]"))
    return out


def _from_prompt_completion(record: dict) -> list[Message]:
    return [Message(role="user", content=_text(record, "prompt")), Message(role="assistant", content=_text(record, "completion"))]


def _from_input_output(record: dict) -> list[Message]:
    return [Message(role="user", content=_text(record, "input_text")), Message(role="assistant", content=_text(record, "output_text"))]


def _from_alpaca(record: dict) -> list[Message]:
    extra = record.get("input")
    if extra is not None and not isinstance(extra, str):
        raise ValueError("field 'input' must be a string when present")
    user = _text(record, "instruction") + (f"\n\n{extra}" if extra and extra.strip() else "")
    system = record.get("system")
    head = [Message(role="system", content=system)] if isinstance(system, str) and system.strip() else []
    return head + [Message(role="user", content=user), Message(role="assistant", content=_text(record, "output"))]


def _from_classification(record: dict) -> list[Message]:
    return [Message(role="user", content=_text(record, "text")), Message(role="assistant", content=_scalar_text(record, "label"))]


_CONVERTERS: dict[str, Callable[[dict], list[Message]]] = {
    "messages": _from_messages,
    "sharegpt": _from_sharegpt,
    "alpaca": _from_alpaca,
    "prompt_completion": _from_prompt_completion,
    "input_output": _from_input_output,
    "classification": _from_classification,
}


# Limits that what `validate` accepts and what `prepare` reads share (both go through to_example).
# A dataset's lines are read back with pydantic, whose JSON parser stops at 200 levels of nesting:
# meta deeper than this would be written and then be unreadable. One text longer than this is a
# document pasted by mistake (~250k tokens, beyond any max_seq_len); spaCy's own max_length.
MAX_META_DEPTH = 32
MAX_TEXT_CHARS = 1_000_000


class LimitError(ValueError):
    """A record beyond MAX_META_DEPTH or MAX_TEXT_CHARS; `code` names it for the validator."""

    def __init__(self, code: str, message: str):
        self.code = code
        super().__init__(message)


def _depth(value: Any) -> int:
    """Levels of nested objects and arrays in a JSON value (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        if level > MAX_META_DEPTH:
            break  # deep enough to refuse; no need to walk the rest
        stack.extend((child, level + 1) for child in children)
    return deepest


def check_limits(messages: list[Message], meta: dict) -> None:
    for index, message in enumerate(messages):
        if len(message.content) > MAX_TEXT_CHARS:
            raise LimitError(
                "text_too_long",
                f"message {index} ({message.role}) holds {len(message.content):,} characters; one text may hold at most "
                f"{MAX_TEXT_CHARS:,}: split it into several examples, or shorten it",
            )
    depth = _depth(meta)
    if depth > MAX_META_DEPTH:
        raise LimitError(
            "meta_too_deep",
            f"'meta' is nested more than {MAX_META_DEPTH} levels deep; at most {MAX_META_DEPTH} are kept: flatten it (e.g. join the path into one key)",
        )


def to_example(record: Any, fmt: FormatName, example_id: str) -> Example:
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    if fmt not in FORMAT_KEYS:
        raise ValueError(f"unknown format '{fmt}' (known: {', '.join(FORMAT_NAMES)})")
    if not all(key in record for key in FORMAT_KEYS[fmt]):
        raise ValueError(f"record is not in the file's format '{fmt}' (needs keys {', '.join(FORMAT_KEYS[fmt])})")
    messages, rejected = pair_messages(record, fmt) if fmt in PREFERENCE_FORMATS else (_CONVERTERS[fmt](record), None)
    if not any(m.role == "assistant" for m in messages):
        raise ValueError("example has no assistant message to learn from")
    label = record.get("label")
    meta = record.get("meta") if isinstance(record.get("meta"), dict) else {}
    check_limits(messages if rejected is None else [*messages, rejected], meta)
    example = Example(id=str(record.get("id") or example_id), messages=messages, rejected=rejected, label=None if label is None else str(label), meta=meta)
    if fmt == "messages" and has_tools(record):
        # The tools were checked with the messages (check_calls); only their shape is read here.
        normalised = normalise(record)
        example.tools = [Tool.model_validate(tool) for tool in normalised["tools"]] if normalised.get("tools") else None
        example.parallel_tool_calls = normalised.get("parallel_tool_calls")
    return example


def check_format_name(fmt: str | None) -> FormatName | None:
    if fmt is not None and fmt not in FORMAT_KEYS:
        raise UserError(f"unknown format '{fmt}'", fix=f"use one of {', '.join(FORMAT_NAMES)}, or leave --format out to detect it")
    return fmt  # type: ignore[return-value]


FORMAT_FIX = (
    "name the format with --format " + "|".join(FORMAT_NAMES) + ", or rename the file's columns with --map, e.g. --map prompt=question completion=answer"
)
SKIP_FIX = "or pass --skip-invalid to leave these lines out (they are listed in the dataset's manifest and report)"
MAX_SKIPPED_LISTED = 1_000  # skipped lines named in a manifest; the count stays exact
LINES_SHOWN = 5
MAX_KINDS = 1_000


class LoadProblems:
    """Problems found while reading, grouped by what is wrong: a column missing from every row of a
    CSV is one problem on 150 lines, said once with the count and the first line numbers."""

    def __init__(self) -> None:
        self.count = 0
        self.groups: dict[tuple[str, str], list[int]] = {}  # (code, message) -> first lines
        self.counts: dict[tuple[str, str], int] = {}
        self.fixes: dict[str, str] = {}  # code -> how to fix it
        self.listed: list[dict[str, Any]] = []  # {line, code, message}, the first MAX_SKIPPED_LISTED

    def add(self, line: int, code: str, message: str, fix: str) -> None:
        self.count += 1
        key = (code, message)
        if key not in self.groups and len(self.groups) >= MAX_KINDS:
            key = (code, "other problems of this kind")  # memory stays bounded on a file broken on every line
        lines = self.groups.setdefault(key, [])
        if len(lines) < LINES_SHOWN:
            lines.append(line)
        self.counts[key] = self.counts.get(key, 0) + 1
        self.fixes.setdefault(code, fix)
        if len(self.listed) < MAX_SKIPPED_LISTED:
            self.listed.append({"line": line, "code": code, "message": message})

    def lines_shown(self, path: Path) -> list[str]:
        shown = []
        for key, lines in list(self.groups.items())[:MAX_PROBLEMS_SHOWN]:
            n = self.counts[key]
            more = f" ({n} lines: {', '.join(map(str, lines))}{', ...' if n > len(lines) else ''})" if n > 1 else ""
            shown.append(f"{path}:{lines[0]}: {key[1]}{more}")
        if len(self.groups) > MAX_PROBLEMS_SHOWN:
            shown.append(f"... and {len(self.groups) - MAX_PROBLEMS_SHOWN} more kinds of problem")
        return shown

    def fix(self, skippable: bool = True) -> str:
        """One fix per kind of problem found: only a record in no known format suggests --format."""
        fixes = list(dict.fromkeys(self.fixes.values()))
        tail = f"; {SKIP_FIX}" if skippable else ""
        return "; ".join(fixes) + tail + " (`tunesmith data validate FILE` lists every line)"

    def raise_if_any(self, path: Path) -> None:
        if self.count:
            raise ProblemList(f"{self.count} problem(s) in {path}", self.lines_shown(path), fix=self.fix())


def record_problems(record: dict, fmt: str) -> Found:
    """Every problem of one record already known to be in format `fmt`, as `data validate` and prepare
    name them: preference pairs by data/preference.py (which builds on records' turn checks), the rest by records."""
    return check_pair(record, fmt) if fmt in PREFERENCE_FORMATS else check_record(record, fmt)


def _problem_code(record: Any, fmt: str) -> tuple[str, str]:
    """The validator's code for a record `to_example` refused, so prepare and validate name it alike."""
    if not isinstance(record, dict):
        return "data_type", "make each record an object"
    if not all(key in record for key in FORMAT_KEYS[fmt]):
        return "missing_field", f"give every record {' and '.join(FORMAT_KEYS[fmt])} (one format per file)"
    errors = [(code, message) for code, message, severity in record_problems(record, fmt) if severity == "error"]
    if not errors:
        return "invalid_record", "correct the record"
    code = errors[0][0]
    if code in ("missing_field", "missing_content"):
        return code, "fill in the empty or missing fields"
    return code, "correct the fields named"


def _in_their_names(message: str, mapping: dict[str, str] | None) -> str:
    """A message about a canonical field, with the file's own column named beside it (--map
    completion=answer: "field 'completion' (your 'answer')"), since that is what the user looks for."""
    for canonical, theirs in (mapping or {}).items():
        message = message.replace(f"field '{canonical}'", f"field '{canonical}' (your '{theirs}')")
    return message


class ExampleReader:
    """Streams a file's examples; `fmt` is known once the first record is read, and `problems`
    holds every line that could not be turned into an example. With `skip_invalid` those lines
    are left out instead of refusing the file."""

    def __init__(self, path: Path, fmt: FormatName | None = None, mapping: dict[str, str] | None = None, skip_invalid: bool = False):
        self.path, self.fmt, self.mapping = path, check_format_name(fmt), mapping
        check_mapping(mapping)
        self.skip_invalid = skip_invalid
        self.problems = LoadProblems()
        self.examples = 0
        self.line = 0  # the source line of the example last yielded, for messages that name it

    def __iter__(self) -> Iterator[Example]:
        for line, record in read_records(self.path):
            if isinstance(record, RecordError):
                self.problems.add(line, record.code, str(record), record.fix or "correct the line")
                continue
            record = apply_mapping(record, self.mapping)
            self.fmt = self.fmt or detect_format(record)
            if self.fmt is None:
                keys = sorted(map(str, record)) if isinstance(record, dict) else type(record).__name__
                self.problems.add(line, "unknown_format", f"unknown format (keys: {keys})", FORMAT_FIX)
                continue
            try:
                example = to_example(record, self.fmt, example_id=f"{self.path.stem}-{line}")
            except ValueError as exc:
                code, fix = _problem_code(record, self.fmt)
                self.problems.add(line, code, _in_their_names(str(exc), self.mapping), fix)
                continue
            self.examples += 1
            self.line = line
            yield example

    def finish(self) -> FormatName:
        """Raise for the problems found (all lines are reported at once, unless skipped) or an empty file."""
        if not self.skip_invalid:
            self.problems.raise_if_any(self.path)
        if not self.examples or self.fmt is None:
            skipped = f" ({self.problems.count} line(s) skipped: {'; '.join(self.problems.lines_shown(self.path)[:3])})" if self.problems.count else ""
            raise UserError(
                f"{self.path} holds no examples{skipped}",
                fix=self.problems.fix(skippable=False) if self.problems.count else 'add at least one record, e.g. {"messages": [...]}',
            )
        return self.fmt


def load_examples(path: Path, fmt: FormatName | None = None, mapping: dict[str, str] | None = None) -> tuple[list[Example], FormatName]:
    """Read every record; report every bad line at once rather than stopping at the first."""
    reader = ExampleReader(path, fmt, mapping)
    examples = list(reader)
    return examples, reader.finish()
