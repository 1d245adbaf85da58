"""A study as a user reads it: the trials table (state, value, parameters, run, why it stopped), the best
trial, the best trial's test-split score (the one read of the test split), and report.html in the study's
folder with Optuna's optimisation history and parameter importance plots."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from tunesmith.eval.report import _png, _pyplot, _table
from tunesmith.tune.study import StudySettings, best_trial, storage, study_folder
from tunesmith.workspace import Workspace

MIN_FOR_IMPORTANCE = 2  # completed trials fANOVA-style importance needs to say anything


@dataclass
class StudyReport:
    name: str
    metric: str
    direction: str
    rows: list[dict[str, Any]]
    best_trial: int | None
    best_value: float | None
    best_params: dict[str, Any] | None
    best_run: str | None
    test: dict[str, Any] | None  # {"trial", "run_id", "metrics"}: the best trial scored once on the test split
    report: Path
    model: str = ""
    parameters: int | None = None  # the base model's size (set with --models)
    notes: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for row in self.rows:
            found[row["state"]] = found.get(row["state"], 0) + 1
        return found


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        why = t.user_attrs.get("error") or t.user_attrs.get("killed") or ""
        if t.state == TrialState.PRUNED:
            why = f"pruned at step {t.user_attrs.get('stopped_at_step', t.last_step)}"
        if t.user_attrs.get("retry_of") is not None:
            why = f"retry of trial {t.user_attrs['retry_of']}" + (f"; {why}" if why else "")
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name.lower(),
                "value": t.value,
                "params": dict(t.params),
                "run_id": t.user_attrs.get("run_id"),
                "seconds": round(seconds, 1) if seconds is not None else None,
                "probe_drop": t.user_attrs.get("probe_drop"),
                "note": why,
            }
        )
    return rows


def study_report(workspace: Workspace, name: str) -> StudyReport:
    """The study's table and best, with report.html written (or rewritten) in its folder."""
    study = optuna.load_study(study_name=name, storage=storage(workspace))
    settings = StudySettings.model_validate(study.user_attrs["settings"])
    best = best_trial(study)
    report = StudyReport(
        name=name,
        metric=settings.metric,
        direction=settings.direction,
        rows=trial_rows(study),
        best_trial=best.number if best else None,
        best_value=best.value if best else None,
        best_params=dict(best.params) if best else None,
        best_run=best.user_attrs.get("run_id") if best else None,
        test=study.user_attrs.get("test"),
        report=study_folder(workspace, name) / "report.html",
        model=str(settings.spec.get("model", {}).get("name", "")),
    )
    _write_html(study, settings, report)
    return report


def _plots(study: optuna.Study, report: StudyReport) -> str:
    import warnings

    from optuna.visualization import matplotlib as oplt

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # the plots are "experimental" since v2.2

    _pyplot()  # the Agg backend, before Optuna's plots touch matplotlib
    completed = [t for t in study.trials if t.state == TrialState.COMPLETE]
    parts = []
    if completed:
        parts.append(_png(oplt.plot_optimization_history(study).figure, "optimisation history"))
    else:
        report.notes.append("no completed trial yet: no optimisation history to draw")
    if len(completed) >= MIN_FOR_IMPORTANCE and len(completed[-1].params) > 1:
        try:
            parts.append(_png(oplt.plot_param_importances(study).figure, "parameter importance"))
        except (RuntimeError, ValueError) as exc:  # e.g. every completed trial had the same value
            report.notes.append(f"parameter importance could not be computed: {exc}")
    else:
        report.notes.append(f"parameter importance needs at least {MIN_FOR_IMPORTANCE} completed trials and 2 parameters")
    return "".join(parts)


def _write_html(study: optuna.Study, settings: StudySettings, report: StudyReport) -> None:
    names = sorted({k for r in report.rows for k in r["params"]})
    table = _table(
        ["trial", "state", settings.metric, *names, "run", "seconds", "probe drop", "note"],
        [
            [
                r["trial"],
                r["state"],
                _fmt(r["value"]),
                *(_fmt(r["params"].get(k)) for k in names),
                r["run_id"] or "",
                r["seconds"],
                _fmt(r["probe_drop"]),
                r["note"],
            ]
            for r in report.rows
        ],
    )
    plots = _plots(study, report)
    best = (
        f"<p>Best: trial {report.best_trial}, validation {html.escape(settings.metric)} <b>{report.best_value:.4g}</b>, run <code>{html.escape(report.best_run or '')}</code></p>"
        if report.best_trial is not None
        else "<p>No completed trial yet.</p>"
    )
    test = (
        "<p>Test split, scored once for the best trial only (trial {trial}, run <code>{run}</code>): {m}</p>".format(
            trial=report.test["trial"],
            run=html.escape(report.test["run_id"]),
            m=html.escape(", ".join(f"{k} {v:.4g}" for k, v in report.test["metrics"].items())),
        )
        if report.test
        else "<p>The test split has not been read (no best trial yet).</p>"
    )
    notes = "".join(f"<p><i>{html.escape(n)}</i></p>" for n in report.notes)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>tunesmith study {html.escape(report.name)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;font-size:14px}}th{{background:#f3f3f3}}img{{max-width:100%}}</style>
</head><body><h1>Study {html.escape(report.name)}</h1>
<p>Base model <b>{html.escape(report.model)}</b>; objective: validation {html.escape(settings.metric)} ({settings.direction}); {len(report.rows)} of {settings.trials} trials.</p>
{best}{test}<h2>Trials</h2>{table}<h2>Plots</h2>{plots}{notes}</body></html>"""
    report.report.write_text(page, encoding="utf-8")


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def study_summary(workspace: Workspace, name: str) -> dict[str, Any]:
    """One line of `tune list`: no report written."""
    from tunesmith.tune.study import counted

    study = optuna.load_study(study_name=name, storage=storage(workspace))
    settings = StudySettings.model_validate(study.user_attrs["settings"])
    best = best_trial(study)
    return {
        "model": str(settings.spec.get("model", {}).get("name", "")),
        "metric": settings.metric,
        "direction": settings.direction,
        "done": sum(counted(t) for t in study.get_trials(deepcopy=False)),
        "trials": settings.trials,
        "best_value": best.value if best else None,
        "best_run": best.user_attrs.get("run_id") if best else None,
    }
