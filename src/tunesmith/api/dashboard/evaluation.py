"""The evaluation pages as JSON: a run's latest evaluation (every model per metric with its 95% interval,
the comparisons, the examples that got better and worse side by side, judge, human review, the
forgetting probe), and two to four runs compared on the same split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunesmith.eval.compare import per_example_value
from tunesmith.eval.report import mean_ci, read_rows
from tunesmith.registry.store import Registry

SIDE_BY_SIDE = 10
SKIP = {"n", "examples_per_s"}


def _report(run_dir: Path) -> dict[str, Any]:
    try:
        found = json.loads((run_dir / "eval" / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def intervals(rows: list[dict[str, Any]], metrics: list[str]) -> dict[str, dict[str, float]]:
    """mean and 95% bootstrap interval of each per-example metric (those a row carries)."""
    found = {}
    for name in metrics:
        values = [v for r in rows if (v := per_example_value(r, name)) is not None]
        if values:
            mean, low, high = mean_ci(values)
            found[name] = {"mean": mean, "low": low, "high": high, "n": len(values)}
    return found


def _splits(report: dict[str, Any]) -> list[str]:
    return [k for k, v in report.items() if k in ("validation", "test") and isinstance(v, dict)]


def _changed(versus: dict[str, Any], headline: str | None) -> tuple[str | None, list[str], list[str]]:
    """(metric, improved ids, regressed ids): the headline's when it moved, else the first metric that did."""
    order = ([headline] if headline in versus else []) + [m for m in versus if m != headline]
    for name in order:
        c = versus.get(name) or {}
        if c.get("improved_ids") or c.get("regressed_ids"):
            return name, c.get("improved_ids", []), c.get("regressed_ids", [])
    return headline, [], []


def evaluation_detail(run_dir: Path) -> dict[str, Any] | None:
    report = _report(run_dir)
    splits = _splits(report)
    if not splits:
        return None
    split = "test" if "test" in splits else splits[0]
    models = report[split]
    headline = ((report.get("headline") or {}).get(split) or {}).get("metric")
    names = sorted({m for result in models.values() for m in (result.get("metrics") or {}) if m not in SKIP})
    rows = {model: read_rows(run_dir, split, model) for model in models}
    per_model = {
        model: {"model": result.get("model"), "metrics": result.get("metrics", {}), "intervals": intervals(rows[model], names)}
        for model, result in models.items()
    }
    versus = (report.get("versus") or {}).get(split, {})
    examples = {}
    for other, by_metric in versus.items():
        metric, better, worse = _changed(by_metric, headline)
        by_id = {other: {r.get("id"): r for r in rows.get(other, [])}, "tuned": {r.get("id"): r for r in rows.get("tuned", [])}}

        def pair(example_id: str, other: str = other, metric: str | None = metric, by_id: dict = by_id) -> dict[str, Any]:
            a, b = by_id[other].get(example_id, {}), by_id["tuned"].get(example_id, {})
            return {
                "id": example_id,
                "prompt": b.get("prompt", a.get("prompt")),
                "reference": b.get("reference", a.get("reference")),
                "other": a.get("prediction"),
                "tuned": b.get("prediction"),
                "other_score": per_example_value(a, metric) if metric else None,
                "tuned_score": per_example_value(b, metric) if metric else None,
            }

        examples[other] = {"metric": metric, "better": [pair(i) for i in better[:SIDE_BY_SIDE]], "worse": [pair(i) for i in worse[:SIDE_BY_SIDE]]}
    return {
        "split": split,
        "splits": splits,
        "headline": headline,
        "metrics": names,
        "models": per_model,
        "versus": versus,
        "verdicts": (report.get("verdicts") or {}).get(split, []),
        "examples": examples,
        "judge": report.get("judge"),
        "human_review": report.get("human_review"),
        "forgetting": report.get("forgetting"),
        "evaluation_id": (report.get("evaluation_id") or {}).get(split),
    }


def _scored(folder: Path, model: str) -> tuple[str, dict[str, Any], Path, dict[str, Any]] | None:
    """(split, metrics, folder of the rows, report) of `model` in the run folder's latest evaluation."""
    report = _report(folder)
    splits = _splits(report)
    for split in (["test"] if "test" in splits else []) + [s for s in splits if s != "test"]:
        found = report[split].get(model)
        if isinstance(found, dict) and isinstance(found.get("metrics"), dict):
            return split, found["metrics"], folder, report
    return None


def compare_runs(registry: Registry, run_ids: list[str]) -> dict[str, Any]:
    """Each run's tuned model side by side, per metric with intervals. A run is scored by its own latest
    evaluation, or, when it has none, by another chosen run's evaluation that compared it (same examples).
    `same_split` says whether every run was scored on the same examples (dataset version and split)."""
    from tunesmith.api.dashboard.runs import read_records

    found = {run_id: registry.run(run_id) for run_id in run_ids}
    runs = []
    for run_id, run in found.items():
        if run is None:
            runs.append({"run_id": run_id, "error": "no such run"})
            continue
        folder = Path(run["path"])
        entry: dict[str, Any] = {"run_id": run_id, "dataset": run["dataset"], "dataset_version": run["dataset_version"], "best_val_loss": run["best_val_loss"]}
        records = read_records(folder)
        entry["curve"] = [[r["step"], r["loss"]] for r in records if "loss" in r and "step" in r]
        scored = _scored(folder, "tuned")
        if scored is None:  # compared inside another chosen run's evaluation
            others = (_scored(Path(o["path"]), run_id) for o in found.values() if o is not None and o is not run)
            scored = next((x for x in others if x is not None), None)
            entry["scored_in"] = None if scored is None else scored[2].name
        if scored is None:
            runs.append({**entry, "error": f"not evaluated yet (tunesmith eval {run_id})"})
            continue
        split, metrics, where, report = scored
        metrics = {k: v for k, v in metrics.items() if k not in SKIP}
        model = "tuned" if where == folder else run_id
        entry.update(
            {
                "split": split,
                "metrics": metrics,
                "intervals": intervals(read_rows(where, split, model), sorted(metrics)),
                "headline": ((report.get("headline") or {}).get(split) or {}).get("metric"),
            }
        )
        runs.append(entry)
    scored_runs = [r for r in runs if "metrics" in r]
    keys = {(r["dataset"], r["dataset_version"], r["split"]) for r in scored_runs}
    names = sorted({m for r in scored_runs for m in r["metrics"]})
    return {"runs": runs, "metrics": names, "same_split": len(keys) <= 1, "splits": sorted(f"{d}@{v} {s}" for d, v, s in keys)}
