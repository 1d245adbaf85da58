"""The tunesmith command line: one table of subcommands, each calling one stage's entry function."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from tunesmith.errors import UserError
from tunesmith.ui import console

app = typer.Typer(
    help="Turn a general LLM into a specialist: prepare data, fine-tune, evaluate against the base.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Prepare and inspect datasets.", no_args_is_help=True)
runs_app = typer.Typer(help="The registry of runs and their evaluations.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(runs_app, name="runs")

FORMAT_HELP = "messages | prompt_completion | input_output (auto-detected when omitted)"


def _workspace():
    from tunesmith.workspace import Workspace

    return Workspace.from_env()


@app.command()
def quickstart(
    examples: int = typer.Option(500, help="how many demo tickets to generate"),
    epochs: int = typer.Option(1, help="training epochs (one reaches the target on the demo task)"),
    seed: int = typer.Option(0, help="drives the data, the split and the initialisation"),
) -> None:
    """The whole loop on the embedded defaults: demo data, base eval, LoRA fine-tune, tuned eval, report."""
    from tunesmith.demo.quickstart import run_quickstart

    run_quickstart(_workspace(), n_examples=examples, epochs=epochs, seed=seed)


@data_app.command("prepare")
def data_prepare(
    file: Path = typer.Argument(..., help="JSONL, JSON (array) or CSV file of examples"),
    format: Optional[str] = typer.Option(None, "--format", help=FORMAT_HELP),
    out: Optional[str] = typer.Option(None, "--out", help="dataset name (default: the file's name)"),
    seed: int = typer.Option(0, help="seed of the split"),
    split: str = typer.Option("0.8,0.1,0.1", help="train,validation,test ratios"),
) -> None:
    """Check, de-duplicate, split by seed and register a dataset; its content hash is its version."""
    from tunesmith.config import DataSpec, validate_spec
    from tunesmith.data.dataset import prepare_dataset
    from tunesmith.report_cli import print_dataset

    ratios = _parse_ratios(split)
    spec = validate_spec(DataSpec, {"path": file, "format": format, "seed": seed, "split_ratios": ratios}, "command-line flags")
    dataset = prepare_dataset(file, _workspace(), name=out, fmt=spec.format, seed=seed, ratios=spec.split_ratios)
    print_dataset(dataset)


def _parse_ratios(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3:
        raise UserError(f"--split {text!r} is not three numbers", fix="write it like 0.8,0.1,0.1")
    return parts  # type: ignore[return-value]


@app.command("train")
def train_cmd(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML run config (see examples/)"),
    model: Optional[str] = typer.Option(None, help="base model: 'smollm2-135m-instruct', a local HF folder or a hub id"),
    data: Optional[str] = typer.Option(None, help="a prepared dataset's name, or a file to prepare"),
    method: Optional[str] = typer.Option(None, help="lora | full"),
    epochs: Optional[int] = typer.Option(None),
    lr: Optional[float] = typer.Option(None, help="peak learning rate"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size"),
    name: Optional[str] = typer.Option(None, help="a label for the run"),
) -> None:
    """Fine-tune a base model; writes a run folder and registers the run."""
    from tunesmith.config import load_run_spec
    from tunesmith.train.trainer import train

    overrides = {"model.name": model, "train.method": method, "train.epochs": epochs, "train.lr": lr, "train.batch_size": batch_size, "name": name}
    if data is not None:
        overrides["data"] = {"path": data} if Path(data).suffix.lower() in (".jsonl", ".json", ".csv") else {"dataset": data}
    spec = load_run_spec(config, overrides)
    result = train(spec, _workspace())
    console.print(f"[green]run {result.info.run_id} completed[/]: best at step {result.info.best_step} (epoch {result.info.best_epoch}), validation loss {result.info.best_val_loss}")
    console.print(f"run folder: {result.run_dir}")
    typer.echo(result.info.run_id)


@app.command("eval")
def eval_cmd(
    run: str = typer.Argument(..., help="run id or run folder"),
    split: str = typer.Option("test", help="validation | test"),
    compare_base: bool = typer.Option(False, "--compare-base", help="also evaluate the base model on the same examples"),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens"),
    batch_size: int = typer.Option(16, "--batch-size"),
    limit: Optional[int] = typer.Option(None, help="only the first N examples"),
) -> None:
    """Score a run on a held-out split; results go into the run folder and the registry."""
    from tunesmith.config import EvalSpec, validate_spec
    from tunesmith.eval.evaluate import evaluate_run
    from tunesmith.eval.report import write_report
    from tunesmith.report_cli import print_comparison
    from tunesmith.runfolder import find_run

    spec = validate_spec(EvalSpec, {"split": split, "max_new_tokens": max_new_tokens, "batch_size": batch_size, "limit": limit}, "command-line flags")
    ws = _workspace()
    run_dir = find_run(ws, run)
    results = evaluate_run(ws, run_dir, spec, compare_base)
    print_comparison(results)
    console.print(f"report: {write_report(run_dir)}")


@app.command()
def generate(
    run: str = typer.Argument(..., help="run id or run folder"),
    prompt: str = typer.Option(..., "--prompt", "-p", help="the user message"),
    system: Optional[str] = typer.Option(None, help="system message (default: the one the run was trained with, if any)"),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens"),
) -> None:
    """One answer from a tuned model, with its training chat template, stopping at end-of-turn."""
    from tunesmith.chat import Session

    session = Session.open(_workspace(), run, system, max_new_tokens)
    typer.echo(session.reply(prompt))


@app.command()
def chat(
    run: str = typer.Argument(..., help="run id or run folder"),
    system: Optional[str] = typer.Option(None, help="system message (default: the one the run was trained with, if any)"),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens"),
) -> None:
    """Talk to a tuned model. Empty line or Ctrl-D ends; /reset clears the conversation."""
    from tunesmith.chat import Session

    Session.open(_workspace(), run, system, max_new_tokens).interactive()


@runs_app.command("list")
def runs_list() -> None:
    """Every run with its base model, dataset version and headline scores."""
    from tunesmith.report_cli import print_runs

    print_runs(_workspace())


@runs_app.command("show")
def runs_show(run: str = typer.Argument(..., help="run id")) -> None:
    """One run: config, dataset, training result and evaluations."""
    from tunesmith.report_cli import print_run

    print_run(_workspace(), run)


def main() -> None:
    """Usage errors exit 2 through Typer; a UserError from any stage is printed without a traceback and exits 2."""
    try:
        app()
    except UserError as exc:
        from rich.markup import escape

        console.print(f"[red]error:[/] {escape(exc.render())}", highlight=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted")
        sys.exit(130)
