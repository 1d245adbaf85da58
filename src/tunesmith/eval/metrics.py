"""Task metrics for generated answers: exact match, JSON validity, per-field accuracy, label macro-F1."""

from __future__ import annotations

import json
from typing import Any

from sklearn.metrics import f1_score

INVALID = "<invalid>"
HEADLINE = ("exact_match", "valid_json", "label_macro_f1", "examples_per_s")


def headline_first(names) -> list[str]:
    """Metric names in reading order: the headline metrics, then the rest alphabetically."""
    return sorted(names, key=lambda k: (k not in HEADLINE, HEADLINE.index(k) if k in HEADLINE else 0, k))


def parse_json_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return None
    return value if isinstance(value, dict) else None


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
