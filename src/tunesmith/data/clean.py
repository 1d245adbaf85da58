"""Repair and tidy example text, and lint the answers for inconsistencies a model would learn.

A fine-tuned model copies its data's habits: mojibake, ragged whitespace, three list styles and
"Billing"/"billing"/"BILLING" for one label all come back out of it. Cleaning fixes what can be
fixed without changing meaning; the lint reports the rest, and rewrites label spellings only
when asked.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Callable
from typing import Literal

import ftfy
from pydantic import BaseModel, ConfigDict

from tunesmith.data.example import Example, Message

MAX_IDS = 20  # ids listed per finding; counts stay exact
LABEL_MAX_CHARS = 40  # an answer this short, on one line, is treated as a label

# Only the encoding repairs: quotes, ligatures, full-width forms and HTML entities can be
# deliberate content (code, markup), so ftfy's other fixes stay off.
_FTFY = ftfy.TextFixerConfig(
    unescape_html=False,
    uncurl_quotes=False,
    fix_latin_ligatures=False,
    fix_character_width=False,
    fix_line_breaks=False,
    explain=False,
)
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")  # what ftfy's remove_control_chars removes
# Anything normalise_whitespace could change: whitespace other than single spaces and line breaks,
# runs of spaces, spaces at a line's edge or the text's, two blank lines in a row, code fences.
_WHITESPACE_TO_FIX = re.compile(r"[^\S \n]|  | \n|\n |\n\n\n|^\s|\s$|```|~~~")
_FENCE = re.compile(r"^\s*(```|~~~)")
_INNER_RUN = re.compile(r"(?<=\S)[ \t]+(?=\S)")
_LIST_STYLES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("Step 1:", re.compile(r"^\s*step\s+\d+\s*[:.)-]", re.IGNORECASE)),
    ("1.", re.compile(r"^\s*\d+\.\s")),
    ("1)", re.compile(r"^\s*\(?\d+\)\s")),
    ("- ", re.compile(r"^\s*-\s")),
    ("* ", re.compile(r"^\s*\*\s")),
    ("• ", re.compile(r"^\s*•\s")),
)


class Variant(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str
    count: int
    example_ids: list[str]


class StyleFinding(BaseModel):
    """One inconsistency across answers: the spellings (or list styles) seen, most common first."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["list_style", "label_spelling", "label_field", "json_value"]
    key: str | None = None  # the JSON key, for json_value findings
    canonical: str
    variants: list[Variant]


class CleanReport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    examples_in: int
    examples_out: int
    repaired_unicode: int
    whitespace_changed: int
    dropped_empty: int
    dropped_ids: list[str]
    findings: list[StyleFinding]
    normalised: int  # examples whose answers or label were rewritten to the common spelling


def clean_examples(examples: list[Example], *, normalise_outputs: bool = False) -> tuple[list[Example], CleanReport]:
    """repair unicode → tidy whitespace → drop empty → lint answers (→ normalise labels)."""
    cleaner = Cleaner()
    kept = [e for e in map(cleaner.clean, examples) if e is not None]
    findings = cleaner.lint.findings()
    normalised = 0
    if normalise_outputs:
        kept, normalised = _normalise(kept, findings)
    return kept, cleaner.report(findings, normalised)


class Cleaner:
    """clean_examples one example at a time, so a file of any size streams through it."""

    def __init__(self) -> None:
        self.examples_in = self.examples_out = self.repaired = self.tidied = self.dropped = 0
        self.dropped_ids: list[str] = []
        self.lint = OutputLint()

    def clean(self, example: Example, *, lint: bool = True) -> Example | None:
        """The cleaned example, or None when nothing is left to learn from. `lint=False`: the
        caller adds it to `self.lint` later (prepare does, after the PII step, so that what the
        lint quotes in reports is already scrubbed)."""
        fixed = _map_text(example, repair_unicode)
        spaced = _map_text(fixed, normalise_whitespace)
        self.examples_in += 1
        self.repaired += fixed != example
        self.tidied += spaced != fixed
        if not _has_content(spaced):
            self.dropped += 1
            if len(self.dropped_ids) < MAX_IDS:
                self.dropped_ids.append(spaced.id)
            return None
        self.examples_out += 1
        if lint:
            self.lint.add(spaced)
        return spaced

    def report(self, findings: list[StyleFinding], normalised: int = 0) -> CleanReport:
        return CleanReport(
            examples_in=self.examples_in,
            examples_out=self.examples_out,
            repaired_unicode=self.repaired,
            whitespace_changed=self.tidied,
            dropped_empty=self.dropped,
            dropped_ids=self.dropped_ids,
            findings=findings,
            normalised=normalised,
        )


def repair_unicode(text: str) -> str:
    # With these settings ftfy can change plain ASCII only by removing control characters (and
    # the terminal escapes that start with one): most text skips it, which is most of clean's time.
    if text.isascii() and _ASCII_CONTROL.search(text) is None:
        return text
    return ftfy.fix_text(text, _FTFY)


def normalise_whitespace(text: str) -> str:
    """CRLF → LF, trailing spaces gone, runs of spaces/tabs inside prose lines collapsed, at most
    one blank line. Leading indentation is kept (it nests lists and code), and fenced code blocks
    are left exactly as written, since spaces inside code and string literals are meaningful."""
    if _WHITESPACE_TO_FIX.search(text) is None:
        return text  # _tidy would not change it; most text is already tidy
    return _tidy(text)


def _tidy(text: str) -> str:
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    out: list[str] = []
    in_code = False
    for line in lines:
        if _FENCE.match(line):
            in_code = not in_code
            out.append(line.rstrip())
        elif in_code:
            out.append(line)
        elif line.strip():
            indent = line[: len(line) - len(line.lstrip())]
            out.append(indent + _INNER_RUN.sub(" ", line.strip()))
        elif out and out[-1] != "":
            out.append("")
    text = "\n".join(out).rstrip()
    # A first line indented as code keeps its indentation; prose loses its leading spaces.
    return text if text.startswith(("    ", "\t")) else text.lstrip()


def _map_text(example: Example, fix: Callable[[str], str]) -> Example:
    messages = [_with_content(m, fix(m.content)) for m in example.messages]
    rejected = None if example.rejected is None else _with_content(example.rejected, fix(example.rejected.content))
    if all(a is b for a, b in zip(messages, example.messages)) and rejected is example.rejected:
        return example
    return example.model_copy(update={"messages": messages, "rejected": rejected})


def _with_content(message: Message, content: str) -> Message:
    # model_copy keeps the turn's tool calls and tool_call_id: only its text is repaired.
    return message if content == message.content else message.model_copy(update={"content": content})


def _has_content(example: Example) -> bool:
    """Something to answer and something to learn: a non-empty user turn and a non-empty answer (both answers of a pair)."""
    roles = {m.role for m in example.messages if m.content.strip() or m.tool_calls}
    return {"user", "assistant"} <= roles and (example.rejected is None or bool(example.rejected.content.strip()))


# --- the lint -------------------------------------------------------------------------------


class _Seen:
    """How often a spelling (or list style) occurred, and the first example ids that used it."""

    __slots__ = ("count", "ids")

    def __init__(self) -> None:
        self.count, self.ids = 0, []

    def add(self, example_id: str) -> None:
        self.count += 1
        if len(self.ids) < MAX_IDS:
            self.ids.append(example_id)


_Groups = dict[str, dict[str, _Seen]]  # spelling key -> spelling -> occurrences


class OutputLint:
    """Collects answers' list styles and label spellings example by example; memory grows with
    the distinct spellings, not with the examples."""

    def __init__(self) -> None:
        self.styles: dict[str, _Seen] = defaultdict(_Seen)
        self.answers: _Groups = defaultdict(lambda: defaultdict(_Seen))
        self.labels: _Groups = defaultdict(lambda: defaultdict(_Seen))
        self.json_values: dict[str, _Groups] = defaultdict(lambda: defaultdict(lambda: defaultdict(_Seen)))

    def add(self, example: Example) -> None:
        answers = _answers(example)
        for style in sorted(set().union(*map(list_styles, answers))):
            self.styles[style].add(example.id)
        for answer in answers:
            if answer and len(answer) <= LABEL_MAX_CHARS and "\n" not in answer and not _is_json(answer):
                _add_spelling(self.answers, answer, example.id)
        if example.label:
            _add_spelling(self.labels, example.label, example.id)
        for answer in answers:
            obj = _load_object(answer) if answer[:1] == "{" else None
            for key, value in (obj or {}).items():
                if isinstance(value, str) and len(value) <= LABEL_MAX_CHARS:
                    _add_spelling(self.json_values[key], value, example.id)

    def findings(self) -> list[StyleFinding]:
        findings = [_list_style_finding(self.styles)]
        findings += _spelling_findings("label_spelling", None, self.answers)
        findings += _spelling_findings("label_field", None, self.labels)
        for key, groups in self.json_values.items():
            findings += _spelling_findings("json_value", key, groups)
        return [f for f in findings if f is not None]


def _add_spelling(groups: _Groups, text: str, example_id: str) -> None:
    key = spelling_key(text)
    if key:
        groups[key][text].add(example_id)


def _answers(example: Example) -> list[str]:
    return [m.content for m in example.messages if m.role == "assistant" and not m.tool_calls]  # a calling turn's text is no answer to lint


def list_styles(text: str) -> set[str]:
    styles = set()
    for line in text.split("\n"):
        style = next((name for name, pattern in _LIST_STYLES if pattern.match(line)), None)
        if style:
            styles.add(style)
    return styles


def _list_style_finding(seen: dict[str, _Seen]) -> StyleFinding | None:
    if len(seen) < 2:
        return None
    variants = sorted((Variant(text=s, count=v.count, example_ids=v.ids) for s, v in seen.items()), key=lambda v: -v.count)
    return StyleFinding(kind="list_style", canonical=variants[0].text, variants=variants)


def _is_json(text: str) -> bool:
    return text[:1] in "{[" and _load_object(text) is not None


def _load_object(text: str) -> dict | None:
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def spelling_key(text: str) -> str:
    """What is left of a label once case, whitespace and punctuation are ignored."""
    return "".join(ch for ch in text.casefold() if ch.isalnum())


def _spelling_findings(kind: str, key: str | None, groups: _Groups) -> list[StyleFinding]:
    findings = []
    for spellings in groups.values():
        if len(spellings) < 2:
            continue
        # Most common first; ties go to the spelling seen first, so the choice is stable.
        ordered = sorted(spellings.items(), key=lambda item: -item[1].count)
        variants = [Variant(text=t, count=v.count, example_ids=v.ids) for t, v in ordered]
        findings.append(StyleFinding(kind=kind, key=key, canonical=variants[0].text, variants=variants))  # type: ignore[arg-type]
    return findings


# --- normalisation --------------------------------------------------------------------------


def _normalise(examples: list[Example], findings: list[StyleFinding]) -> tuple[list[Example], int]:
    normalise = normalise_with(findings)
    out, changed = [], 0
    for example in examples:
        new = normalise(example)
        changed += new != example
        out.append(new)
    return out, changed


def normalise_with(findings: list[StyleFinding]) -> Callable[[Example], Example]:
    """The rewrite to the most common spelling that `findings` call for, one example at a time."""
    answers = {v.text: f.canonical for f in findings if f.kind == "label_spelling" for v in f.variants}
    labels = {v.text: f.canonical for f in findings if f.kind == "label_field" for v in f.variants}
    json_values: dict[str, dict[str, str]] = defaultdict(dict)
    for f in findings:
        if f.kind == "json_value" and f.key is not None:
            json_values[f.key].update({v.text: f.canonical for v in f.variants})
    return lambda example: _normalise_one(example, answers, labels, json_values)


def _normalise_one(example: Example, answers: dict[str, str], labels: dict[str, str], json_values: dict[str, dict[str, str]]) -> Example:
    messages = [_with_content(m, answers.get(m.content) or _rewrite_json(m.content, json_values)) if m.role == "assistant" else m for m in example.messages]
    label = labels.get(example.label, example.label) if example.label is not None else None
    if label == example.label and all(a is b for a, b in zip(messages, example.messages)):
        return example
    return example.model_copy(update={"messages": messages, "label": label})


def _rewrite_json(text: str, json_values: dict[str, dict[str, str]]) -> str:
    obj = _load_object(text) if json_values and text[:1] == "{" else None
    if obj is None:
        return text
    wanted = {k: json_values.get(k, {}).get(v, v) if isinstance(v, str) else v for k, v in obj.items()}
    if wanted == obj:
        return text
    rewritten = text
    for key, value in obj.items():
        if wanted[key] != value:
            # Replace the value in place so the answer keeps its own layout and key order.
            pattern = re.compile(re.escape(json.dumps(key)) + r"(\s*:\s*)" + re.escape(json.dumps(value, ensure_ascii=False)))
            rewritten = pattern.sub(lambda m, new=wanted[key]: json.dumps(key) + m.group(1) + json.dumps(new, ensure_ascii=False), rewritten, count=1)
    return rewritten if _load_object(rewritten) == wanted else json.dumps(wanted, ensure_ascii=False)
