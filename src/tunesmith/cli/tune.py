"""`tunesmith tune`: hyperparameter and base-model search (docs/tune.md); `tune list`, `tune show STUDY`."""

from __future__ import annotations

from pathlib import Path

import typer

from tunesmith.cli.common import current_workspace
from tunesmith.errors import UserError

tune_app = typer.Typer(
    help="Search hyperparameters (and base models) with Optuna: `tune --config run.yaml --trials N`, `tune --resume STUDY`, `tune list`, `tune show STUDY`.",
    invoke_without_command=True,
)


@tune_app.callback()
def tune_cmd(
    ctx: typer.Context,
    config: Path | None = typer.Option(None, "--config", "-c", help="the run config every trial starts from (as `tunesmith train --config`)"),
    trials: int | None = typer.Option(None, "--trials", "-n", help="trials to finish (completed, pruned or failed), per model with --models"),
    jobs: int | None = typer.Option(None, "--jobs", "-j", help="trials at once, each in its own process (default 1: in this process)"),
    max_time: float | None = typer.Option(None, "--max-time", help="the whole study's wall-clock budget in seconds; no trial starts after it"),
    max_cost: float | None = typer.Option(None, "--max-cost", help="the whole study's budget in money (needs --price-per-hour)"),
    price_per_hour: float | None = typer.Option(None, "--price-per-hour", help="what an hour of this machine costs (default: train.price_per_hour)"),
    metric: str | None = typer.Option(
        None,
        "--metric",
        "-m",
        help="validation metric to optimise: val_loss (default), exact_match, valid_json, label_macro_f1, field_accuracy.<field>; a classifier's f1_macro (its default), accuracy",
    ),
    space: Path | None = typer.Option(None, "--space", help="a YAML file changing the method's default search space (docs/tune.md)"),
    models: str | None = typer.Option(None, "--models", help="comma-separated base models: the same search on each"),
    target: float | None = typer.Option(None, "--target", help="with --models: name the smallest model whose best validation metric reaches this"),
    keep_general: float | None = typer.Option(None, "--keep-general", help="trials whose general-skills probe drop exceeds this are infeasible, e.g. 0.03"),
    name: str | None = typer.Option(None, "--name", help="the study's name (default: the config's name and the time)"),
    resume: str | None = typer.Option(None, "--resume", help="continue this study: finished trials are kept, a trial cut short is tried again"),
    pruner: str = typer.Option("median", "--pruner", help="median | halving | none"),
    seed: int = typer.Option(0, "--seed", help="seeds the sampler"),
) -> None:
    """Search hyperparameters: each trial is a registered run; the best is scored once on the test split."""
    if ctx.invoked_subcommand is not None:
        return
    from tunesmith.workflows import resume_tune, tune

    if resume is not None:
        given = [
            flag
            for flag, value in (("--config", config), ("--trials", trials), ("--space", space), ("--models", models), ("--metric", metric))
            if value is not None
        ]
        if given:
            raise UserError(
                f"--resume continues a study with its own settings; {', '.join(given)} cannot change them", fix="drop those flags, or start a new study"
            )
        print_search(resume_tune(resume, jobs=jobs, workspace=current_workspace()))
        return
    if config is None or trials is None:
        raise UserError("tune needs --config RUN.yaml and --trials N (or --resume STUDY)", fix="e.g. tunesmith tune --config run.yaml --trials 20")
    result = tune(
        config,
        trials=trials,
        jobs=jobs or 1,
        name=name,
        metric=metric,
        space=space,
        models=[m.strip() for m in models.split(",") if m.strip()] if models else None,
        target=target,
        keep_general=keep_general,
        max_time=max_time,
        max_cost=max_cost,
        price_per_hour=price_per_hour,
        pruner=pruner,
        seed=seed,
        workspace=current_workspace(),
    )
    print_search(result)


@tune_app.command("list")
def tune_list() -> None:
    """Every study in the workspace: trials finished, best value, best run."""
    print_studies(current_workspace())


@tune_app.command("show")
def tune_show(study: str = typer.Argument(..., help="a study's name (or a --models search's name)")) -> None:
    """A study's trials table and best; writes its report.html (optimisation history, parameter importance)."""
    from tunesmith.tune.search import show_search

    print_search(show_search(current_workspace(), study))


# ---------------------------------------------------------------- printing (stdout: the tables; stderr: progress)


def print_search(result) -> None:
    from rich.table import Table

    from tunesmith.ui import out

    for report in result.studies:
        names = sorted({k for r in report.rows for k in r["params"]})
        size = f", {report.parameters / 1e6:.1f}M parameters" if report.parameters else ""
        table = Table(title=f"study {report.name} ({report.model}{size}): validation {report.metric}, {report.direction}")
        for column in ("trial", "state", report.metric, *names, "run", "s", "note"):
            table.add_column(column)
        for r in report.rows:
            table.add_row(
                str(r["trial"]), r["state"], _fmt(r["value"]), *(_fmt(r["params"].get(k)) for k in names), r["run_id"] or "", _fmt(r["seconds"]), r["note"]
            )
        out.print(table)
        if report.best_trial is None:
            out.print("best: no completed trial")
        else:
            params = ", ".join(f"{k}={_fmt(v)}" for k, v in (report.best_params or {}).items())
            out.print(f"best: trial {report.best_trial}, validation {report.metric} {report.best_value:.4g} ({params}), run {report.best_run}", soft_wrap=True)
        if report.test:
            scores = ", ".join(f"{k} {v:.4g}" for k, v in report.test["metrics"].items() if isinstance(v, (int, float)))
            out.print(f"test split (scored once, for the best trial only: trial {report.test['trial']}): {scores}", soft_wrap=True)
        out.print(f"report: {report.report}", soft_wrap=True)
    if result.verdict:
        out.print(result.verdict, soft_wrap=True)


def print_studies(workspace) -> None:
    from rich.table import Table

    from tunesmith.tune.report import study_summary
    from tunesmith.tune.study import study_names
    from tunesmith.ui import out

    names = study_names(workspace)
    if not names:
        out.print("no studies yet; start one with `tunesmith tune --config run.yaml --trials N`")
        return
    table = Table(title=f"studies in {workspace.home}")
    for column in ("study", "model", "metric", "trials", "best", "best run"):
        table.add_column(column)
    for name in names:
        s = study_summary(workspace, name)
        table.add_row(name, s["model"], f"{s['metric']} ({s['direction'][:3]})", f"{s['done']}/{s['trials']}", _fmt(s["best_value"]), s["best_run"] or "")
    out.print(table)


def _fmt(value) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)
