"""Check a training file before it costs a training run: every problem, with its line and how to fix it.

Streams the file: the state kept per line is O(1) and the whole check holds a fixed amount
of memory whatever the file's size (see `_SeenContent` for the duplicate check's trade-off).
Codes for chat data are the OpenAI cookbook's names, so users can look them up.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.data.example import Example
from tunesmith.data.formats import (
    FORMAT_KEYS,
    FormatName,
    LimitError,
    RecordError,
    apply_mapping,
    check_format_name,
    check_mapping,
    detect_format,
    read_records,
    record_problems,
    to_example,
)
from tunesmith.data.records import TURNS, Severity

# Problems kept for display; every one is still counted, so `ok` and the totals stay exact
# while a file that is wrong on every one of a million lines does not fill memory.
MAX_PROBLEMS_KEPT = 10_000
IMBALANCE_RATIO = 10
MAX_LABELS_COUNTED = 1_000


@dataclass(frozen=True)
class Problem:
    line: int  # 0 for a finding about the whole file
    code: str
    message: str
    severity: Severity

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.line, "code": self.code, "message": self.message}


@dataclass
class ValidationReport:
    path: Path
    format: str | None = None
    examples: int = 0
    records: int = 0
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    n_errors: int = 0
    n_warnings: int = 0

    @property
    def ok(self) -> bool:
        return self.n_errors == 0

    @property
    def truncated(self) -> bool:
        return self.n_errors > len(self.errors) or self.n_warnings > len(self.warnings)

    def add(self, line: int, code: str, message: str, severity: Severity = "error") -> None:
        self.counts[code] += 1
        if severity == "error":
            self.n_errors += 1
            kept = self.errors
        else:
            self.n_warnings += 1
            kept = self.warnings
        if len(kept) < MAX_PROBLEMS_KEPT:
            kept.append(Problem(line, code, message, severity))

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "format": self.format or "unknown",
            "examples": self.examples,
            "errors": [p.to_dict() for p in self.errors],
            "warnings": [p.to_dict() for p in self.warnings],
        }


def validate_file(
    path: Path,
    fmt: FormatName | None = None,
    mapping: dict[str, str] | None = None,
    tokenizer: Any = None,
    max_seq_len: int | None = None,
    *,
    pii: bool = False,
    pii_ner: bool = True,
    pii_allow: list[str] | tuple[str, ...] = (),
) -> ValidationReport:
    """Read every record of `path` and report every problem; never stops at the first. `pii`: also
    look for personal data with prepare's detectors (and `pii_allow`), one warning per type."""
    path = Path(path)
    check_mapping(mapping)
    checker = _FileChecker(ValidationReport(path, check_format_name(fmt)), mapping, _LengthCheck.make(tokenizer, max_seq_len))
    if pii:
        checker.personal = _PersonalData(pii_ner, pii_allow)
    for line, record in read_records(path):
        checker.check(line, record)
    checker.finish()
    return checker.report


# ---------------------------------------------------------------- one line


def _describe(record: Any) -> str:
    return type(record).__name__ if not isinstance(record, dict) else "keys " + ", ".join(sorted(map(str, record))[:8])


# ---------------------------------------------------------------- the whole file


class _FileChecker:
    """Line-by-line checks plus the few running tallies the file-level findings need."""

    def __init__(self, report: ValidationReport, mapping: dict[str, str] | None, lengths: _LengthCheck | None):
        self.report = report
        self.fmt: str | None = report.format
        self.mapping = mapping
        self.lengths = lengths
        self.seen = _SeenContent()
        self.labels = _LabelCounts()
        self.style = _OutputStyle()
        self.system = _SystemConsistency()
        self.personal: _PersonalData | None = None

    def check(self, line: int, record: Any) -> None:
        self.report.records += 1
        if isinstance(record, RecordError):
            self.report.add(line, record.code, f"{record} ({record.fix})")
            return
        record = apply_mapping(record, self.mapping)
        if not isinstance(record, dict):
            self.report.add(
                line, "data_type", f'record is a {type(record).__name__}, not an object; each record must be a JSON object like {{"messages": [...]}}'
            )
            return
        fmt = self._format_of(line, record)
        if fmt is None:
            return
        found = record_problems(record, fmt)
        for code, message, severity in found:
            self.report.add(line, code, message, severity)
        if not any(severity == "error" for _, _, severity in found):
            self._check_example(line, record, fmt)

    def _format_of(self, line: int, record: dict) -> str | None:
        """The file's format if this record is in it; otherwise report why not."""
        detected = detect_format(record)
        if self.fmt is None and detected is not None:
            self.fmt = self.report.format = detected
        if self.fmt is None:
            self.report.add(
                line, "missing_field", f"no known format's fields ({_describe(record)}); use one of {_format_list()}, or rename keys with --map canonical=yours"
            )
            return None
        if all(key in record for key in FORMAT_KEYS[self.fmt]):
            return self.fmt
        if detected is not None:
            self.report.add(line, "mixed_format", f"record is in format '{detected}' but the file is '{self.fmt}'; convert it, or keep one format per file")
        elif self.fmt in TURNS:
            self.report.add(line, "missing_messages_list", f"no '{TURNS[self.fmt].list_key}' list ({_describe(record)}); every {self.fmt} record needs one")
        else:
            missing = [key for key in FORMAT_KEYS[self.fmt] if key not in record]
            self.report.add(
                line,
                "missing_field",
                f"field(s) {', '.join(missing)} missing ({_describe(record)}); every {self.fmt} record needs {' and '.join(FORMAT_KEYS[self.fmt])}, or use --map",
            )
        return None

    def _check_example(self, line: int, record: dict, fmt: str) -> None:
        try:
            example = to_example(record, fmt, example_id=str(line))  # type: ignore[arg-type]
        except LimitError as exc:  # the limits prepare reads with: refused here too, by name
            self.report.add(line, exc.code, f"{exc}")
            return
        except ValueError as exc:  # a case the checks above do not name; still reported, never raised
            self.report.add(line, "invalid_record", f"{exc}")
            return
        self.report.examples += 1
        earlier = self.seen.check_and_add(bytes.fromhex(example.content_key()), line)
        if earlier is not None:
            where = f"line {earlier}" if earlier > 0 else "an earlier line (beyond the lines remembered exactly)"
            self.report.add(line, "duplicate", f"same content as {where}; remove one, or it counts twice in training", "warning")
        if not any(m.role == "assistant" and m.weight != 0 for m in example.messages):
            self.report.add(line, "no_trainable_tokens", "every assistant turn has weight 0: nothing to learn; set weight 1 on the answer to train", "warning")
        elif self.lengths is not None:
            for code, message in self.lengths.check(example):
                self.report.add(line, code, message, "warning")
        self.labels.add(example.label)
        self.style.add(line, None if example.reference_calls else example.reference)  # a call is not an answer's style
        if fmt in TURNS:
            self.system.add(line, any(m.role == "system" for m in example.messages))
        if self.personal is not None:
            self.personal.add(line, example)

    def finish(self) -> None:
        if self.report.records == 0:
            self.report.add(0, "empty_file", "the file holds no records; add at least one example")
        for tally in (self.labels, self.style, self.system, *([self.personal] if self.personal else [])):
            for line, code, message in tally.findings():
                self.report.add(line, code, message, "warning")


def _format_list() -> str:
    return "; ".join(f"{name} ({'+'.join(keys)})" for name, keys in FORMAT_KEYS.items())


class _SeenContent:
    """Which example contents came before, in bounded memory.

    The first EXACT_WINDOW distinct contents are kept exactly (64-bit digest prefix -> line,
    ~10 MB at most), so a duplicate among them names its earlier line. Past that, contents go
    into a fixed 16 MiB Bloom filter: a duplicate is still caught but its line cannot be
    named, and about one in 100,000 new lines may be flagged falsely at a million lines
    (false positives grow with the count, never false negatives). The trade buys flat memory
    on files of any size; an exact set would grow by ~100 bytes a line.
    """

    EXACT_WINDOW = 100_000
    BLOOM_BITS = 1 << 27
    BLOOM_HASHES = 4

    def __init__(self) -> None:
        self._exact: dict[int, int] = {}
        self._bloom: bytearray | None = None  # allocated only for files larger than the exact window

    def check_and_add(self, digest: bytes, line: int) -> int | None:
        """The earlier line with this content (0 when known only to the Bloom filter), or None if new."""
        key = int.from_bytes(digest[:8], "big")
        if key in self._exact:
            return self._exact[key]
        if len(self._exact) < self.EXACT_WINDOW:
            self._exact[key] = line
            return None
        return 0 if self._bloom_add(digest) else None

    def _bloom_add(self, digest: bytes) -> bool:
        if self._bloom is None:
            self._bloom = bytearray(self.BLOOM_BITS // 8)
        present = True
        for i in range(self.BLOOM_HASHES):
            bit = int.from_bytes(digest[8 + 4 * i : 12 + 4 * i], "big") % self.BLOOM_BITS
            byte, mask = bit >> 3, 1 << (bit & 7)
            if not self._bloom[byte] & mask:
                present = False
                self._bloom[byte] |= mask
        return present


class _LabelCounts:
    """Examples per label; gives up on files whose 'labels' are free text (too many to be classes)."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.overflow = False

    def add(self, label: str | None) -> None:
        if label is None or self.overflow:
            return
        if label not in self.counts and len(self.counts) >= MAX_LABELS_COUNTED:
            self.overflow, self.counts = True, Counter()
            return
        self.counts[label] += 1

    def findings(self) -> list[tuple[int, str, str]]:
        if len(self.counts) < 2:
            return []
        (top, most), (bottom, least) = self.counts.most_common()[0], self.counts.most_common()[-1]
        if most <= IMBALANCE_RATIO * least:
            return []
        return [
            (
                0,
                "class_imbalance",
                f"label '{top}' has {most} examples but '{bottom}' only {least} (over {IMBALANCE_RATIO}x); add examples of the rare labels, or the model learns to ignore them",
            )
        ]


_STEP = re.compile(r"^\s*step\s*\d+\s*[:.)]", re.IGNORECASE | re.MULTILINE)
_NUMBERED = re.compile(r"^\s*\d+[.)]\s", re.MULTILINE)


class _OutputStyle:
    """Which shapes the answers take, with the first line of each: mixed shapes teach the model to guess."""

    def __init__(self) -> None:
        self.first: dict[str, int] = {}
        self.counts: Counter = Counter()

    def add(self, line: int, answer: str | None) -> None:
        if answer is None:
            return
        for style in self._styles(answer):
            self.counts[style] += 1
            self.first.setdefault(style, line)

    @staticmethod
    def _styles(answer: str) -> list[str]:
        styles = ["json" if _is_json_object(answer) else "not_json"]
        if _STEP.search(answer):
            styles.append("step_list")
        elif _NUMBERED.search(answer):
            styles.append("numbered_list")
        return styles

    def findings(self) -> list[tuple[int, str, str]]:
        found = []
        for a, b, what in (("json", "not_json", "JSON objects"), ("numbered_list", "step_list", "'1.' lists and 'Step 1:' lists")):
            if self.counts[a] and self.counts[b]:
                found.append(
                    (
                        0,
                        "inconsistent_output_style",
                        f"answers mix {what}: {self.counts[a]} {a} (first at line {self.first[a]}) and {self.counts[b]} {b} (first at line {self.first[b]}); make every answer the same shape",
                    )
                )
        return found


def _is_json_object(text: str) -> bool:
    text = text.strip()
    if not text.startswith("{"):
        return False
    try:
        return isinstance(json.loads(text), dict)
    except (ValueError, RecursionError):
        return False


class _SystemConsistency:
    """Some chat examples with a system message and some without usually means a preprocessing slip."""

    def __init__(self) -> None:
        self.with_system = 0
        self.without = 0
        self.first_without = 0

    def add(self, line: int, has_system: bool) -> None:
        if has_system:
            self.with_system += 1
        else:
            self.without += 1
            self.first_without = self.first_without or line

    def findings(self) -> list[tuple[int, str, str]]:
        if not (self.with_system and self.without):
            return []
        return [
            (
                self.first_without,
                "missing_system_message",
                f"{self.without} example(s) have no system message (first at line {self.first_without}) while {self.with_system} do; give every example the same system message, or none",
            )
        ]


class _PersonalData:
    """prepare's PII detectors over the examples, a batch at a time (NER is fastest on batches):
    per type, how many, the first line and a few examples as `--pii report` shows them."""

    BATCH = 256

    def __init__(self, ner: bool, allow: list[str] | tuple[str, ...]):
        from tunesmith.data.pii import Scrubber

        self.scrubber = Scrubber("report", ner=ner, allow=allow)
        self.batch: list[tuple[int, Example]] = []
        self.first: dict[str, int] = {}

    def add(self, line: int, example: Example) -> None:
        self.batch.append((line, example))
        if len(self.batch) >= self.BATCH:
            self._flush()

    def _flush(self) -> None:
        from tunesmith.data.pii import text_fields

        self.scrubber.scrub([example for _, example in self.batch])
        for line, example in self.batch:
            for _, text in text_fields(example):
                for span in self.scrubber.spans(text):
                    self.first.setdefault(span.type, line)
        self.batch = []

    def findings(self) -> list[tuple[int, str, str]]:
        self._flush()
        report = self.scrubber.finish()
        return [
            (
                self.first[kind],
                "personal_data",
                f"{count} {kind} finding(s), first at line {self.first[kind]}, e.g. {', '.join(f'{text!r} x{n}' for text, n in report.examples.get(kind, {}).items())}; "
                "prepare with --pii redact (or drop) to remove them; --pii-allow TERM for any that is not personal data (a product, a machine)",
            )
            for kind, count in report.counts.items()
        ]


class _LengthCheck:
    """Token counts with the model's own chat template, mirroring how training truncates and masks."""

    def __init__(self, tokenizer: Any, max_seq_len: int):
        self.tokenizer = tokenizer
        self.max_seq_len = max_seq_len

    @classmethod
    def make(cls, tokenizer: Any, max_seq_len: int | None) -> _LengthCheck | None:
        if tokenizer is None:
            return None
        from tunesmith.config import TrainSpec

        return cls(tokenizer, max_seq_len or TrainSpec.model_fields["max_seq_len"].default)

    def check(self, example: Example) -> list[tuple[str, str]]:
        from tunesmith.chat_template import trained_spans

        try:
            text, spans = trained_spans(self.tokenizer, example, "assistant")
        except Exception as exc:  # a template that refuses a role, say: one line's warning, not a crash
            return [("chat_template", f"the model's chat template cannot render this example ({str(exc)[:120]})")]
        offsets = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        total, limit = len(offsets), self.max_seq_len
        if total <= limit:
            return []
        trained = [i for i, (start, _) in enumerate(offsets) if any(lo <= start < hi for lo, hi in spans)]
        final_lo, final_hi = spans[-1] if spans else (0, 0)
        final = [i for i, (start, _) in enumerate(offsets) if final_lo <= start < final_hi]
        lost_final = sum(i >= limit for i in final)
        fix = f"raise --max-seq-len to {total}, or shorten the example"
        if not any(i < limit for i in trained):
            return [("no_trainable_tokens", f"{total} tokens, and every trained token lies past max_seq_len {limit}: training drops this example; {fix}")]
        return [
            (
                "too_long",
                f"{total} tokens with the chat template, over max_seq_len {limit}: the last {total - limit} are cut, {lost_final} of them from the final assistant answer's {len(final)}; {fix}",
            )
        ]


def long_example_check(tokenizer: Any, max_seq_len: int | None) -> Any:
    """A function telling whether an example is cut by training at `max_seq_len` (the too_long and
    no_trainable_tokens findings of `validate --model`), for `prepare --model` to act on."""
    check = _LengthCheck.make(tokenizer, max_seq_len)
    assert check is not None
    return lambda example: [code for code, _ in check.check(example) if code in ("too_long", "no_trainable_tokens")]


# ---------------------------------------------------------------- showing it

MAX_ROWS_SHOWN = 200


def load_tokenizer_only(name: str) -> Any:
    """The model's tokenizer and chat template, without its weights: all a length check needs."""
    from tunesmith.models.loading import load_tokenizer, quiet_libraries, resolve_model_path

    quiet_libraries()
    return load_tokenizer(resolve_model_path(name))


def print_validation(report: ValidationReport, as_json: bool = False) -> None:
    """One JSON object on stdout for machines, or a table and a summary line for people."""
    import sys

    if as_json:
        sys.stdout.write(json.dumps(report.to_json(), ensure_ascii=False) + "\n")
        return
    from rich.markup import escape
    from rich.table import Table

    from tunesmith.ui import out

    problems = sorted(report.errors + report.warnings, key=lambda p: (p.line, p.severity != "error"))
    # The same problem on many lines (a column missing from every row) is one row: its count and first lines.
    groups: dict[tuple[str, str, str], list[int]] = {}
    for p in problems:
        groups.setdefault((p.severity, p.code, p.message), []).append(p.line)
    if groups:
        table = Table(title=f"{report.path}: problems", show_lines=False)
        for column in ("line", "severity", "code", "how to fix"):
            table.add_column(column, overflow="fold")
        for (severity, code, message), lines in list(groups.items())[:MAX_ROWS_SHOWN]:
            colour = "red" if severity == "error" else "yellow"
            where = str(lines[0] or "file") if len(lines) == 1 else f"{', '.join(map(str, lines[:5]))}{', ...' if len(lines) > 5 else ''} ({len(lines)} lines)"
            table.add_row(where, f"[{colour}]{severity}[/]", code, escape(message))
        out.print(table)
    hidden = report.n_errors + report.n_warnings - sum(len(lines) for lines in list(groups.values())[:MAX_ROWS_SHOWN])
    if hidden:
        out.print(f"... and {hidden} more (--json lists up to {MAX_PROBLEMS_KEPT} of each kind)")
    verdict = "[green]ok[/]" if report.ok else "[red]fix the errors before training[/]"
    out.print(
        f"{escape(str(report.path))}: {report.examples} example(s), format {report.format or 'unknown'}: "
        f"{report.n_errors} error(s), {report.n_warnings} warning(s): {verdict}",
        highlight=False,
    )
