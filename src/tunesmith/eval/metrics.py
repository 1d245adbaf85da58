"""Task metrics for generated answers.

Two layers: `score_example` + `aggregate` score a run's evaluation rows (exact match, JSON
validity, per-field accuracy, label macro-F1, examples/s); `compute_metrics` scores any list of
predictions against references with the field's libraries: scikit-learn (accuracy,
precision/recall/F1, confusion matrix), rouge-score (ROUGE-1/2/L F-measure, stemming on),
sacrebleu (corpus BLEU and chrF), jsonschema (schema conformance), plus a user's own
`module:function`.
"""

from __future__ import annotations

import importlib
import json
import math
import numbers
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sklearn.metrics import f1_score

from tunesmith.errors import UserError
from tunesmith.eval.toolcalls import is_tool_task, score_calls, tool_call_metrics

INVALID = "<invalid>"
HEADLINE = ("exact_match", "valid_json", "label_macro_f1", "examples_per_s")


@dataclass(frozen=True)
class MetricDefinition:
    """What a number means: which way is better ("higher", "lower" or "none": a description of the
    answers, never better or worse) and its kind ("quality", "speed" or "description"). Every
    report (terminal, report.json, report.html, the comparisons) reads this one table."""

    name: str
    direction: str
    kind: str

    @property
    def higher_is_better(self) -> bool | None:
        return None if self.direction == "none" else self.direction == "higher"


_DEFINITIONS = [
    *(
        MetricDefinition(n, "higher", "quality")
        for n in (
            "exact_match",
            "valid_json",
            "field_accuracy",
            "label_macro_f1",
            "accuracy",
            "correct",
            "schema_valid",
            "rouge1",
            "rouge2",
            "rougeL",
            "bleu",
            "chrf",
            "f1_macro",
            "f1_micro",
            "precision_macro",
            "precision_micro",
            "recall_macro",
            "recall_micro",
            # a preference run's held-out pairs (eval/preference.py)
            "reward_accuracy",
            "preference_accuracy",
            "reward_margin",
        )
    ),
    *(MetricDefinition(n, "higher", "quality") for n in ("tool_name_accuracy", "tool_arguments_exact_match", "tool_arguments_schema_valid")),
    *(MetricDefinition(n, "lower", "quality") for n in ("tool_missed_call", "tool_unwanted_call")),
    MetricDefinition("perplexity", "lower", "quality"),
    MetricDefinition("ref_nll", "lower", "quality"),
    MetricDefinition("examples_per_s", "higher", "speed"),
    *(MetricDefinition(n, "none", "description") for n in ("n", "length_chars", "length_words", "majority_class_accuracy")),
]
METRIC_DEFINITIONS: dict[str, MetricDefinition] = {d.name: d for d in _DEFINITIONS}


def definition(name: str) -> MetricDefinition:
    """The metric's definition; `field_accuracy.team` is a field_accuracy. A name not in the table (a
    user's custom metric) is read as higher-is-better quality, as a score usually is."""
    base = name.split(".", 1)[0] if name.startswith("field_accuracy.") else name
    found = METRIC_DEFINITIONS.get(base)
    return MetricDefinition(name, found.direction, found.kind) if found else MetricDefinition(name, "higher", "quality")


# The headline metric per task (docs/evaluation.md, "Verdicts"): the first one the evaluation
# reported. Free text is never judged by exact match first: a better paraphrase is still a miss there.
TASK_HEADLINE = {
    "json": ("exact_match",),
    "fields": ("exact_match",),
    "classification": ("label_macro_f1", "f1_macro", "accuracy", "exact_match"),
    "text": ("rougeL", "chrf", "bleu", "exact_match"),
    "tools": ("tool_arguments_exact_match", "tool_name_accuracy", "exact_match"),
    # pairs: whether the tuned model ranks the preferred answer higher, against the base's ranking
    "preference": ("reward_accuracy", "preference_accuracy"),
}
HEADLINE_NAMES = {
    "exact_match": "exact match",
    "rougeL": "ROUGE-L",
    "chrf": "chrF",
    "bleu": "BLEU",
    "label_macro_f1": "macro-F1",
    "f1_macro": "macro-F1",
    "accuracy": "accuracy",
    "field_accuracy": "field accuracy",
    "tool_arguments_exact_match": "tool-call exact match",
    "tool_name_accuracy": "tool name accuracy",
    "reward_accuracy": "reward accuracy",
    "preference_accuracy": "preference accuracy",
}


def headline_metric(task: str, metrics: dict[str, Any]) -> str:
    """The metric a verdict is given on, for this task, among those reported."""
    return next((m for m in TASK_HEADLINE.get(task, ()) if isinstance(metrics.get(m), (int, float))), "exact_match")


def metric_label(name: str) -> str:
    return HEADLINE_NAMES.get(name, name)


def headline_first(names, headline: str | None = None) -> list[str]:
    """Metric names in reading order: the task's headline metric, the usual headline metrics, then the rest alphabetically."""
    order = ((headline,) if headline else ()) + tuple(h for h in HEADLINE if h != headline)
    return sorted(names, key=lambda k: (k not in order, order.index(k) if k in order else 0, k))


def parse_json_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return None
    return value if isinstance(value, dict) else None


_FIELD = re.compile(r"^\s*([A-Za-z_][\w.-]{0,63})\s*[=:]\s*(.*?)\s*$")


def parse_fields(text: str) -> dict[str, str] | None:
    """`key=value; key=value` or `key: value` lines as {key: value}; None unless the whole text is two or
    more such fields (one `Note: ...` line is free text, not a record)."""
    if not isinstance(text, str) or parse_json_object(text) is not None:
        return None
    parts = [p for p in re.split(r"[;\n]", text.strip()) if p.strip()]
    fields: dict[str, str] = {}
    for part in parts:
        match = _FIELD.match(part)
        if match is None or match.group(1) in fields:
            return None
        fields[match.group(1)] = match.group(2)
    return fields if len(fields) >= 2 else None


def structured(text: str) -> dict[str, Any] | None:
    """The answer as fields: a JSON object, or key=value / key: value pairs."""
    return parse_json_object(text) if parse_json_object(text) is not None else parse_fields(text)


def label_field(reference: dict[str, Any] | None, label: str | None) -> str | None:
    """The JSON field that carries the example's label (e.g. "team"), if the answer is JSON."""
    if reference is None or label is None:
        return None
    return next((k for k, v in reference.items() if str(v) == label), None)


def score_example(prediction: str, reference: str, label: str | None) -> dict[str, Any]:
    ref_obj = parse_json_object(reference)
    pred_obj = parse_json_object(prediction)
    row: dict[str, Any] = {"exact_match": float(prediction.strip() == reference.strip())}
    if ref_obj is not None:
        row["valid_json"] = float(pred_obj is not None)
        row["exact_match"] = float(pred_obj == ref_obj) if pred_obj is not None else 0.0
        row["fields"] = {k: float(pred_obj is not None and pred_obj.get(k) == v) for k, v in ref_obj.items()}
    elif (ref_fields := parse_fields(reference)) is not None:
        row["fields"] = field_matches(prediction, reference)
        row["exact_match"] = float(parse_fields(prediction) == ref_fields)
    key = label_field(ref_obj, label)
    if label is not None:
        row["label"] = label
        if key is not None:
            row["predicted_label"] = str(pred_obj[key]) if pred_obj is not None and key in pred_obj else INVALID
        else:
            row["predicted_label"] = prediction.strip()
    return row


def aggregate(rows: list[dict[str, Any]], seconds: float) -> dict[str, float]:
    n = len(rows)
    metrics = {"n": float(n), "exact_match": sum(r["exact_match"] for r in rows) / n}
    if any("valid_json" in r for r in rows):
        metrics["valid_json"] = sum(r.get("valid_json", 0.0) for r in rows) / n
    if any("fields" in r for r in rows):
        fields = sorted({k for r in rows for k in r.get("fields", {})})
        for name in fields:
            scored = [r["fields"][name] for r in rows if name in r.get("fields", {})]
            metrics[f"field_accuracy.{name}"] = sum(scored) / len(scored)
    labelled = [r for r in rows if "label" in r]
    if labelled:
        truth = [r["label"] for r in labelled]
        predicted = [r["predicted_label"] for r in labelled]
        metrics["label_macro_f1"] = float(f1_score(truth, predicted, labels=sorted(set(truth)), average="macro", zero_division=0))
    metrics["examples_per_s"] = n / seconds if seconds > 0 else 0.0
    return {k: round(v, 4) for k, v in metrics.items()}


# ---------------------------------------------------------------- compute_metrics: any predictions vs references

MetricValue = float | dict[str, Any]
Options = dict[str, Any]

# Classification: references short, single-line, and few distinct values that repeat.
CLASS_MAX_CHARS = 64
CLASS_MAX_WORDS = 6
CLASS_MAX_DISTINCT = 50


def _exact_match(preds: list[str], refs: list[str], opts: Options) -> dict[str, MetricValue]:
    """Stripped string equality; when the reference is a JSON object, equality of the parsed objects."""
    hits = []
    for pred, ref in zip(preds, refs):
        ref_obj = parse_json_object(ref)
        ref_fields = parse_fields(ref) if ref_obj is None else None
        hits.append(
            parse_json_object(pred) == ref_obj
            if ref_obj is not None
            else parse_fields(pred) == ref_fields
            if ref_fields is not None
            else pred.strip() == ref.strip()
        )
    return {"exact_match": sum(hits) / len(hits)}


def class_labels(preds: list[str], refs: list[str], labels: list[str] | None) -> tuple[list[str], list[str], list[str]]:
    """(truth, predicted, label order): stripped; a prediction outside the labels becomes INVALID."""
    truth = [r.strip() for r in refs]
    order = [str(x) for x in labels] if labels else sorted(set(truth))
    known = set(order)
    predicted = [p.strip() if p.strip() in known else INVALID for p in preds]
    return truth, predicted, order


def _accuracy(preds: list[str], refs: list[str], opts: Options) -> dict[str, MetricValue]:
    from sklearn.metrics import accuracy_score

    truth, predicted, _ = class_labels(preds, refs, opts.get("labels"))
    return {"accuracy": float(accuracy_score(truth, predicted))}


def _precision_recall_f1(preds: list[str], refs: list[str], opts: Options) -> dict[str, MetricValue]:
    """Macro and micro averages over the reference labels (sklearn `labels=`), and per class."""
    from sklearn.metrics import precision_recall_fscore_support

    truth, predicted, order = class_labels(preds, refs, opts.get("labels"))
    out: dict[str, MetricValue] = {}
    for average in ("macro", "micro"):
        p, r, f, _ = precision_recall_fscore_support(truth, predicted, labels=order, average=average, zero_division=0)
        out.update({f"precision_{average}": float(p), f"recall_{average}": float(r), f"f1_{average}": float(f)})
    p, r, f, support = precision_recall_fscore_support(truth, predicted, labels=order, average=None, zero_division=0)
    out["per_class"] = {
        label: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(support[i])} for i, label in enumerate(order)
    }
    return out


def _confusion_matrix(preds: list[str], refs: list[str], opts: Options) -> dict[str, MetricValue]:
    """Rows are the true labels, columns the predicted ones; INVALID collects answers outside the labels."""
    from sklearn.metrics import confusion_matrix

    truth, predicted, order = class_labels(preds, refs, opts.get("labels"))
    axis = order + ([INVALID] if INVALID in predicted and INVALID not in order else [])
    matrix = confusion_matrix(truth, predicted, labels=axis)
    return {"confusion_matrix": {"labels": axis, "matrix": matrix.tolist()}}


def rouge_scores(preds: list[str], refs: list[str]) -> list[dict[str, float]]:
    """Per-example ROUGE-1/2/L F-measure (rouge-score, Porter stemming on)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    return [{k: v.fmeasure for k, v in scorer.score(ref, pred).items()} for pred, ref in zip(preds, refs)]


def _rouge(preds: list[str], refs: list[str], opts: Options) -> dict[str, MetricValue]:
    rows = rouge_scores(preds, refs)
    return {k: sum(r[k] for r in rows) / len(rows) for k in ("rouge1", "rouge2", "rougeL")}


def _bleu(preds: list[str], refs: list[str], opts: Options) -> dict[str, MetricValue]:
    import sacrebleu

    return {"bleu": float(sacrebleu.corpus_bleu(preds, [refs]).score)}


def _chrf(preds: list[str], refs: list[str], opts: Options) -> dict[str, MetricValue]:
    import sacrebleu

    return {"chrf": float(sacrebleu.corpus_chrf(preds, [refs]).score)}


def _valid_json(preds: list[str], refs: list[str], opts: Options) -> dict[str, MetricValue]:
    return {"valid_json": sum(parse_json_object(p) is not None for p in preds) / len(preds)}


def field_matches(pred: str, ref: str) -> dict[str, float]:
    """For a JSON-object or key=value reference, 1.0 per field the prediction got exactly right, else 0.0."""
    ref_obj = parse_json_object(ref)
    pred_obj = parse_json_object(pred) if ref_obj is not None else parse_fields(pred)
    ref_obj = ref_obj if ref_obj is not None else parse_fields(ref)
    if ref_obj is None:
        return {}
    return {k: float(pred_obj is not None and k in pred_obj and pred_obj[k] == v) for k, v in ref_obj.items()}


def _field_accuracy(preds: list[str], refs: list[str], opts: Options) -> dict[str, MetricValue]:
    rows = [field_matches(p, r) for p, r in zip(preds, refs) if structured(r) is not None]
    if not rows:
        raise UserError(
            "field_accuracy needs JSON-object or key=value references, and none of them is one",
            fix="leave field_accuracy out of --metrics, or give references whose answers are JSON objects or `key=value; key=value` pairs",
        )
    out: dict[str, MetricValue] = {"field_accuracy": sum(sum(r.values()) for r in rows) / max(1, sum(len(r) for r in rows))}
    for name in sorted({k for r in rows for k in r}):
        scored = [r[name] for r in rows if name in r]
        out[f"field_accuracy.{name}"] = sum(scored) / len(scored)
    return out


def load_json_schema(path: Path) -> dict[str, Any]:
    """Read and check a JSON Schema file; a bad one is a UserError naming the file."""
    from jsonschema import SchemaError, validators

    if not Path(path).is_file():
        raise UserError(f"no such JSON Schema file: {path}", fix="check the path given to --json-schema")
    try:
        schema = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f"{path}:{exc.lineno}" if isinstance(exc, json.JSONDecodeError) else str(path)
        raise UserError(f"the JSON Schema is not valid JSON ({exc})", where=where, fix="the file must hold one JSON Schema object") from None
    if not isinstance(schema, (dict, bool)):
        raise UserError("the JSON Schema must be a JSON object", where=str(path), fix='write e.g. {"type": "object", "required": ["team"]}')
    try:
        validators.validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        raise UserError(
            f"not a valid JSON Schema: {exc.message}",
            where=str(path),
            fix="check it against the JSON Schema spec (draft 2020-12 unless $schema says otherwise)",
        ) from None
    return schema


def schema_checker(schema: dict[str, Any]) -> Callable[[str], bool]:
    """pred -> conforms: the prediction parses as JSON and validates against the schema."""
    from jsonschema import validators

    validator = validators.validator_for(schema)(schema)

    def conforms(pred: str) -> bool:
        try:
            value = json.loads(pred)
        except (json.JSONDecodeError, TypeError, RecursionError):
            return False
        return validator.is_valid(value)

    return conforms


def _json_schema(preds: list[str], refs: list[str], opts: Options) -> dict[str, MetricValue]:
    schema = opts.get("json_schema")
    if schema is None:
        raise UserError("the json_schema metric needs a schema", fix="give one with --json-schema FILE (or json_schema= in Python)")
    conforms = schema_checker(schema)
    return {"schema_valid": sum(conforms(p) for p in preds) / len(preds)}


def _length(preds: list[str], refs: list[str], opts: Options) -> dict[str, MetricValue]:
    return {"length_chars": sum(len(p) for p in preds) / len(preds), "length_words": sum(len(p.split()) for p in preds) / len(preds)}


METRICS: dict[str, Callable[[list[str], list[str], Options], dict[str, MetricValue]]] = {
    "exact_match": _exact_match,
    "accuracy": _accuracy,
    "f1": _precision_recall_f1,
    "confusion_matrix": _confusion_matrix,
    "rouge": _rouge,
    "bleu": _bleu,
    "chrf": _chrf,
    "valid_json": _valid_json,
    "field_accuracy": _field_accuracy,
    "json_schema": _json_schema,
    "length": _length,
    "tool_calls": tool_call_metrics,
}
# Other names users reach for, and the metric that answers them.
ALIASES = {
    "em": "exact_match",
    "precision": "f1",
    "recall": "f1",
    "macro_f1": "f1",
    "rouge1": "rouge",
    "rouge2": "rouge",
    "rougeL": "rouge",
    "rougel": "rouge",
    "sacrebleu": "bleu",
    "json": "valid_json",
    "schema": "json_schema",
    "schema_valid": "json_schema",
    "fields": "field_accuracy",
    "confusion": "confusion_matrix",
    "tools": "tool_calls",
    "tool_call": "tool_calls",
}
TASK_METRICS = {
    "json": ["exact_match", "valid_json", "field_accuracy"],
    "fields": ["exact_match", "field_accuracy"],
    "classification": ["accuracy", "f1", "confusion_matrix"],
    "text": ["exact_match", "rouge", "bleu", "chrf", "length"],
    "tools": ["exact_match", "tool_calls"],
}


def detect_task(references: list[str], labels: list[str] | None = None) -> str:
    """tools | json | fields | classification | text, from the references alone (or classification when labels are given)."""
    if is_tool_task(references):
        return "tools"
    if references and all(parse_json_object(r) is not None for r in references):
        return "json"
    if references and all(parse_fields(r) is not None for r in references):
        return "fields"
    if labels:
        return "classification"
    stripped = [r.strip() for r in references]
    distinct = set(stripped)
    short = all(r and "\n" not in r and len(r) <= CLASS_MAX_CHARS and len(r.split()) <= CLASS_MAX_WORDS for r in stripped)
    if short and len(distinct) < len(stripped) and len(distinct) <= min(CLASS_MAX_DISTINCT, max(2, len(stripped) // 2)):
        return "classification"
    return "text"


def resolve_metric_names(
    names: list[str] | None, references: list[str], *, labels: list[str] | None = None, json_schema: dict[str, Any] | None = None
) -> list[str]:
    """The metric functions to run, in order: the named ones (aliases resolved) or the task's defaults."""
    if names is None:
        chosen = list(TASK_METRICS[detect_task(references, labels)])
    else:
        chosen = []
        for raw in names:
            name = raw.strip()
            if not name:
                continue
            if name.lower() == "perplexity":
                raise UserError("perplexity needs the model, not just its outputs", fix="use `tunesmith eval RUN`, which loads the model")
            key = name if name in METRICS else ALIASES.get(name, ALIASES.get(name.lower(), name.lower()))
            if key not in METRICS:
                raise UserError(f"unknown metric '{name}'", fix=f"use any of {', '.join(METRICS)} (comma-separated), or leave --metrics out to choose by task")
            chosen.append(key)
    if json_schema is not None:
        chosen.append("json_schema")
    return list(dict.fromkeys(chosen))


def compute_metrics(
    predictions: list[str],
    references: list[str],
    names: list[str] | None = None,
    *,
    labels: list[str] | None = None,
    json_schema: dict[str, Any] | str | Path | None = None,
    custom: str | list[str] | None = None,
    tools: list[list[dict] | None] | None = None,
) -> dict[str, MetricValue]:
    """Score predictions against references (same order, same length).

    names None chooses by task (`detect_task`): JSON references get exact_match, valid_json and
    per-field accuracy; a classification gets accuracy, precision/recall/F1 and the confusion
    matrix; free text gets exact_match, ROUGE, BLEU, chrF and length. A schema (dict or file)
    adds schema_valid; `custom` ("module:function", or several) adds the function's value(s).
    References holding tool calls get the tool-calling metrics (eval/toolcalls.py); `tools`, each
    example's tool definitions, adds their schema validity.
    Scalars are plain floats; per-class numbers and the confusion matrix are nested dicts.
    """
    if len(predictions) != len(references):
        raise UserError(f"{len(predictions)} predictions but {len(references)} references", fix="give one prediction per reference, in the same order")
    if not references:
        raise UserError("nothing to score: no predictions", fix="give at least one prediction and its reference")
    preds, refs = [str(p) for p in predictions], [str(r) for r in references]
    schema = load_json_schema(Path(json_schema)) if isinstance(json_schema, (str, Path)) else json_schema
    opts: Options = {"labels": labels, "json_schema": schema, "tools": tools}
    out: dict[str, MetricValue] = {}
    for name in resolve_metric_names(names, refs, labels=labels, json_schema=schema):
        out.update(METRICS[name](preds, refs, opts))
    for spec in [custom] if isinstance(custom, str) else (custom or []):
        out.update(run_custom_metric(spec, preds, refs))
    return out


# ---------------------------------------------------------------- custom metrics: module:function


def load_custom_metric(spec: str) -> Callable[[list[str], list[str]], Any]:
    """Import `module:function` (the current folder is importable too)."""
    module_name, sep, attr = spec.partition(":")
    fix = "name it as module:function, e.g. mymetrics:keyword_recall, with mymetrics.py in the current folder or installed"
    if not sep or not module_name or not attr:
        raise UserError(f"custom metric '{spec}' is not module:function", fix=fix)
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure is the user's to fix
        raise UserError(f"custom metric '{spec}': cannot import module '{module_name}' ({type(exc).__name__}: {exc})", fix=fix) from None
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise UserError(f"custom metric '{spec}': module '{module_name}' has no '{attr}'", fix=fix)
    if not callable(fn):
        raise UserError(
            f"custom metric '{spec}': '{attr}' is not a function",
            fix="point at a function fn(predictions: list[str], references: list[str]) -> float | dict[str, float]",
        )
    return fn  # type: ignore[return-value]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def run_custom_metric(spec: str, predictions: list[str], references: list[str]) -> dict[str, float]:
    """The function's float as {function name: value}, or its dict as {"name.key": value}."""
    fn = load_custom_metric(spec)
    name = spec.partition(":")[2]
    shape = "fn(predictions: list[str], references: list[str]) -> float | dict[str, float]"
    try:
        value = fn(list(predictions), list(references))
    except Exception as exc:  # noqa: BLE001 - the user's code failed; say whose
        raise UserError(f"custom metric '{spec}' raised {type(exc).__name__}: {exc}", fix=f"fix the function; it is called as {shape}") from None
    if _number(value) is not None:
        return {name: _number(value)}  # type: ignore[dict-item]
    if isinstance(value, dict) and value and all(isinstance(k, str) and _number(v) is not None for k, v in value.items()):
        return {f"{name}.{k}": _number(v) for k, v in value.items()}  # type: ignore[misc]
    raise UserError(
        f"custom metric '{spec}' returned {type(value).__name__} {str(value)[:80]!r}, not a finite number or a dict of str to numbers",
        fix=f"return a float or a dict of floats: {shape}",
    )


# ---------------------------------------------------------------- per-example scores (for the scores JSONL)


def example_scores(
    predictions: list[str],
    references: list[str],
    names: list[str],
    *,
    labels: list[str] | None = None,
    json_schema: dict[str, Any] | None = None,
    tools: list[list[dict] | None] | None = None,
) -> list[dict[str, Any]]:
    """One dict per example with the per-example side of the chosen metrics (corpus-only ones, BLEU and chrF, are left out)."""
    rows: list[dict[str, Any]] = [{} for _ in predictions]
    if "exact_match" in names:
        for row, pred, ref in zip(rows, predictions, references):
            row["exact_match"] = _exact_match([pred], [ref], {})["exact_match"]
    if {"accuracy", "f1", "confusion_matrix"} & set(names):
        _, predicted, _ = class_labels(predictions, references, labels)
        for row, ref, label in zip(rows, references, predicted):
            row.update(label=ref.strip(), predicted_label=label, correct=float(label == ref.strip()))
    if "rouge" in names:
        for row, scores in zip(rows, rouge_scores(predictions, references)):
            row.update(scores)
    if "valid_json" in names:
        for row, pred in zip(rows, predictions):
            row["valid_json"] = float(parse_json_object(pred) is not None)
    if "field_accuracy" in names:
        for row, pred, ref in zip(rows, predictions, references):
            row["fields"] = field_matches(pred, ref)
    if "json_schema" in names and json_schema is not None:
        conforms = schema_checker(json_schema)
        for row, pred in zip(rows, predictions):
            row["schema_valid"] = float(conforms(pred))
    if "length" in names:
        for row, pred in zip(rows, predictions):
            row.update(length_chars=len(pred), length_words=len(pred.split()))
    if "tool_calls" in names:
        for row, pred, ref, declared in zip(rows, predictions, references, tools or [None] * len(rows)):
            row.update(score_calls(pred, ref, declared))
    return rows
