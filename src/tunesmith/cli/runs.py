"""`tunesmith runs`: the registry of runs and their evaluations (tables in cli/report.py)."""

from __future__ import annotations

import typer

from tunesmith.cli.common import current_workspace

runs_app = typer.Typer(help="The registry of runs and their evaluations.", no_args_is_help=True)


@runs_app.command("list")
def runs_list() -> None:
    """Every run with its base model, dataset version and headline scores."""
    from tunesmith.cli.report import print_runs

    print_runs(current_workspace())


@runs_app.command("show")
def runs_show(run: str = typer.Argument(..., help="run id or the run's --name")) -> None:
    """One run: config, dataset, training result and evaluations."""
    from tunesmith.cli.report import print_run

    print_run(current_workspace(), run)


@runs_app.command("reindex")
def runs_reindex() -> None:
    """Rebuild the registry (registry.db) from the run and dataset folders, the truth; a damaged registry is kept beside it."""
    from tunesmith.cli.report import print_reindex

    print_reindex(current_workspace())


@runs_app.command("compare")
def runs_compare(runs: list[str] = typer.Argument(..., help="two or more run ids or folders")) -> None:
    """Runs side by side: dataset version, key hyperparameters, validation loss and evaluation metrics."""
    from tunesmith.cli.report import print_runs_compare

    print_runs_compare(current_workspace(), runs)


@runs_app.command("lineage")
def runs_lineage(
    run: str = typer.Argument(..., help="run id or the run's --name"),
    as_json: bool = typer.Option(False, "--json", help="print the chain as JSON"),
) -> None:
    """The run, the run it continued (`train --from`), and so on: each step's dataset version, where that came from, and its key metric."""
    from tunesmith.cli.report import print_lineage

    print_lineage(current_workspace(), run, as_json)
