"""The answer format a run was trained to give, read from its training answers, and what breaks it.

A JSON task requires the fields every training answer had; a field with few distinct values that
repeat (team, priority) is categorical, and an answer with a value training never showed is outside
the trained label set. A free-text task has no format to break. detect_task and the parsers are the
evaluation's own (eval/metrics.py), so monitoring and evaluation read an answer the same way."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from tunesmith.eval.metrics import detect_task, parse_fields, parse_json_object

CATEGORICAL_MAX = 50  # more distinct values than this and a field is free (a product code, a name)

REFUSAL = re.compile(
    r"\b(I(?:'m| am) (?:sorry|afraid|unable|not able)|I (?:cannot|can't|can not|won't) (?:help|assist|do|provide|answer|comply)|"
    r"as an AI\b|I'm just an AI|I must decline|I do not feel comfortable)",
    re.IGNORECASE,
)


def is_refusal(answer: str) -> bool:
    return bool(REFUSAL.search(answer[:400]))


@dataclass
class AnswerFormat:
    task: str  # json | fields | classification | text | tools
    fields: list[str] = field(default_factory=list)  # present in every training answer
    categories: dict[str, set[str]] = field(default_factory=dict)  # field -> values seen in training
    labels: set[str] = field(default_factory=set)  # classification: the trained answers

    @property
    def checkable(self) -> bool:
        return self.task in ("json", "fields", "classification")

    def describe(self) -> str:
        if self.task in ("json", "fields"):
            cats = "; ".join(f"{k} in {{{', '.join(sorted(v)[:8])}{', ...' if len(v) > 8 else ''}}}" for k, v in sorted(self.categories.items()))
            return f"{'JSON object' if self.task == 'json' else 'key=value fields'} with {', '.join(self.fields)}" + (f"; {cats}" if cats else "")
        if self.task == "classification":
            return f"one of {len(self.labels)} labels"
        return self.task

    def problem(self, answer: str) -> str | None:
        """Why the answer breaks the trained format, or None when it keeps it."""
        if self.task == "classification":
            text = answer.strip()
            return None if text in self.labels else f"label {text[:40]!r} is not one of the {len(self.labels)} trained labels"
        if self.task not in ("json", "fields"):
            return None
        parsed = parse_json_object(answer) if self.task == "json" else parse_fields(answer)
        if parsed is None:
            return "not valid JSON" if self.task == "json" else "not key=value fields"
        missing = [f for f in self.fields if f not in parsed]
        if missing:
            return f"missing field(s): {', '.join(missing)}"
        for name, values in self.categories.items():
            value = parsed.get(name)
            if str(value) not in values:
                return f"{name}={str(value)[:40]!r} is outside the trained set ({', '.join(sorted(values)[:8])})"
        return None


def answer_format(references: list[str], labels: list[str] | None = None) -> AnswerFormat:
    task = detect_task(references, labels if labels else None)
    if task == "classification":
        return AnswerFormat(task, labels=set(labels) if labels else {r.strip() for r in references})
    if task not in ("json", "fields"):
        return AnswerFormat(task)
    parse = parse_json_object if task == "json" else parse_fields
    objects = [o for o in map(parse, references) if o is not None]
    fields = [k for k in objects[0] if all(k in o for o in objects)] if objects else []
    categories = {}
    for name in fields:
        values = [str(o[name]) for o in objects if not isinstance(o[name], (dict, list))]
        distinct = set(values)
        if len(values) == len(objects) and len(distinct) <= min(CATEGORICAL_MAX, max(2, len(values) // 5)):
            categories[name] = distinct
    return AnswerFormat(task, fields=fields, categories=categories)
