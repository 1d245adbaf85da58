"""`tunesmith eval score`: score any system's outputs against a reference file, no model loaded.

read predictions → read references → match (by id, else by order) → compute_metrics → table,
and with --out a report.json plus one line of scores per example.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from tunesmith.data.example import Example
from tunesmith.data.formats import load_examples, read_records
from tunesmith.errors import ProblemList, UserError
from tunesmith.eval.metrics import compute_metrics, detect_task, example_scores, headline_first, load_json_schema, resolve_metric_names
from tunesmith.ui import console, out

PREDICTION_KEYS = ("prediction", "output", "text")
SHOWN_IDS = 5


@dataclass
class Prediction:
    line: int
    id: str | None
    text: str


@dataclass
class Matched:
    ids: list[str]
    predictions: list[str]
    references: list[str]
    by: str  # "id" | "order"
    missing_predictions: list[str] = field(default_factory=list)  # reference ids with no prediction
    unmatched_predictions: list[str] = field(default_factory=list)  # prediction ids with no reference


@dataclass
class ScoreReport:
    predictions_file: str
    references_file: str
    task: str
    metric_names: list[str]
    matched: Matched
    metrics: dict[str, Any]
    rows: list[dict[str, Any]]

    def summary(self) -> dict[str, Any]:
        m = self.matched
        return {
            "predictions": self.predictions_file,
            "references": self.references_file,
            "n": len(m.ids),
            "matched_by": m.by,
            "task": self.task,
            "metric_names": self.metric_names,
            "missing_predictions": m.missing_predictions,
            "unmatched_predictions": m.unmatched_predictions,
            "metrics": self.metrics,
        }


def score_files(
    predictions_file: Path,
    references_file: Path,
    names: list[str] | None = None,
    *,
    json_schema_file: Path | None = None,
    custom: list[str] | None = None,
    fmt: str | None = None,
) -> ScoreReport:
    """read → match → score. Raises UserError (exit 2) on bad input, with file:line and a fix."""
    predictions = read_predictions(predictions_file)
    examples = read_references(references_file, fmt)
    schema = load_json_schema(json_schema_file) if json_schema_file is not None else None
    matched = match(predictions, examples, predictions_file, references_file)
    all_references = [e.reference or "" for e in examples]  # the task is the reference file's, not the matched subset's
    chosen = resolve_metric_names(names, all_references, json_schema=schema)
    metrics = compute_metrics(matched.predictions, matched.references, chosen, json_schema=schema, custom=custom)
    scores = example_scores(matched.predictions, matched.references, chosen, json_schema=schema)
    rows = [{"id": i, "prediction": p, "reference": r, **s} for i, p, r, s in zip(matched.ids, matched.predictions, matched.references, scores)]
    task = detect_task(all_references) if names is None else "named"
    return ScoreReport(str(predictions_file), str(references_file), task, chosen, matched, metrics, rows)


def read_predictions(path: Path) -> list[Prediction]:
    """Lines like {"id": ..., "prediction": ...} ("output" or "text" also work); every bad line reported at once."""
    found: list[Prediction] = []
    problems: list[str] = []
    for line, record in read_records(Path(path)):
        if isinstance(record, UserError):
            problems.append(f"{path}:{line}: {record}")
            continue
        key = next((k for k in PREDICTION_KEYS if isinstance(record, dict) and k in record), None)
        if key is None:
            keys = sorted(map(str, record)) if isinstance(record, dict) else type(record).__name__
            problems.append(f"{path}:{line}: no prediction (keys: {keys})")
            continue
        value = record[key]
        if value is None:
            problems.append(f'{path}:{line}: "{key}" is null')
            continue
        ident = record.get("id")
        found.append(Prediction(line, None if ident is None else str(ident), value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)))
    fix = 'write one JSON object per line: {"id": "<reference id>", "prediction": "<the system\'s answer>"}'
    if problems:
        raise ProblemList(
            f"{len(problems)} problem(s) in {path}", problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else []), fix=fix
        )
    if not found:
        raise UserError(f"{path} holds no predictions", fix=fix)
    duplicates = _duplicates(found)
    if duplicates:
        raise ProblemList(f"{len(duplicates)} duplicate id(s) in {path}", duplicates[:20], fix="give each prediction its own id (the reference's id)")
    return found


def _duplicates(predictions: list[Prediction]) -> list[str]:
    first: dict[str, int] = {}
    problems = []
    for p in predictions:
        if p.id is None:
            continue
        if p.id in first:
            problems.append(f"line {p.line}: id {p.id!r} already on line {first[p.id]}")
        else:
            first[p.id] = p.line
    return problems


def read_references(path: Path, fmt: str | None = None) -> list[Example]:
    examples, _ = load_examples(Path(path), fmt)  # type: ignore[arg-type]
    missing = [e.id for e in examples if e.reference is None]
    if missing:
        raise UserError(
            f"{len(missing)} reference example(s) do not end with an assistant message (first: {', '.join(missing[:SHOWN_IDS])})",
            where=str(path),
            fix="the final assistant message is the reference; end every example with one",
        )
    return examples


def match(predictions: list[Prediction], examples: list[Example], predictions_file: Path, references_file: Path) -> Matched:
    """By id when any prediction id names a reference; else by order when both files have as many records."""
    by_id = {p.id: p for p in predictions if p.id is not None}
    common = [e for e in examples if e.id in by_id]
    if common:
        ref_ids = {e.id for e in examples}
        return Matched(
            ids=[e.id for e in common],
            predictions=[by_id[e.id].text for e in common],
            references=[e.reference or "" for e in common],
            by="id",
            missing_predictions=[e.id for e in examples if e.id not in by_id],
            unmatched_predictions=[f"{p.id} (line {p.line})" if p.id is not None else f"line {p.line}" for p in predictions if p.id not in ref_ids],
        )
    if len(predictions) == len(examples):
        return Matched([e.id for e in examples], [p.text for p in predictions], [e.reference or "" for e in examples], by="order")
    sample = ", ".join(p.id for p in predictions[:3] if p.id is not None) or "none"
    raise UserError(
        f"no prediction id matches a reference id (prediction ids: {sample}; reference ids: {', '.join(e.id for e in examples[:3])}), "
        f"and the files hold {len(predictions)} predictions but {len(examples)} references, so they cannot be aligned by order",
        where=str(predictions_file),
        fix=f'give each prediction the id of its reference in {references_file} (ids are the record\'s "id", else <file stem>-<line>), '
        "or write exactly one prediction per reference, in the same order",
    )


# ---------------------------------------------------------------- output


def print_score_report(report: ScoreReport) -> None:
    m = report.matched
    if m.by == "order":
        console.print(f"[yellow]note:[/] no prediction id matches a reference id; matched the {len(m.ids)} records by order")
    if m.missing_predictions:
        console.print(f"[yellow]warning:[/] {len(m.missing_predictions)} reference(s) have no prediction and are not scored: {_some(m.missing_predictions)}")
    if m.unmatched_predictions:
        console.print(
            f"[yellow]warning:[/] {len(m.unmatched_predictions)} prediction(s) match no reference id and are not scored: {_some(m.unmatched_predictions)}"
        )
    scalars = {k: v for k, v in report.metrics.items() if not isinstance(v, dict)}
    out.print(f"{len(m.ids)} examples scored, matched by {m.by}; metrics: {'chosen for a ' + report.task + ' task' if report.task != 'named' else 'as named'}")
    table = Table(title="scores")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name in headline_first(scalars):
        table.add_row(name, f"{scalars[name]:.4f}")
    out.print(table)
    if "per_class" in report.metrics:
        per_class = Table(title="per class")
        for column in ("label", "precision", "recall", "f1", "support"):
            per_class.add_column(column, justify="left" if column == "label" else "right")
        for label, row in report.metrics["per_class"].items():
            per_class.add_row(label, f"{row['precision']:.4f}", f"{row['recall']:.4f}", f"{row['f1']:.4f}", str(row["support"]))
        out.print(per_class)
    if "confusion_matrix" in report.metrics:
        out.print(confusion_table(report.metrics["confusion_matrix"]))


def confusion_table(confusion: dict[str, Any]) -> Any:
    """A confusion matrix ({labels, matrix}) as a rich table: rows are the reference labels."""
    from rich.table import Table

    table = Table(title="confusion matrix (rows: reference, columns: prediction)")
    table.add_column("")
    for name in confusion["labels"]:
        table.add_column(name, justify="right")
    for name, row in zip(confusion["labels"], confusion["matrix"]):
        table.add_row(name, *map(str, row))
    return table


def _some(ids: list[str]) -> str:
    return ", ".join(ids[:SHOWN_IDS]) + (f" ... and {len(ids) - SHOWN_IDS} more" if len(ids) > SHOWN_IDS else "")


def write_score_report(report: ScoreReport, folder: Path) -> tuple[Path, Path]:
    """report.json (the summary) and scores.jsonl (one line per scored example)."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--out {folder} is a file; it names a folder for report.json and scores.jsonl", fix="give a folder path (new or existing)")
    folder.mkdir(parents=True, exist_ok=True)
    summary_path, rows_path = folder / "report.json", folder / "scores.jsonl"
    summary_path.write_text(json.dumps(report.summary(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    rows_path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in report.rows), encoding="utf-8")
    return summary_path, rows_path
