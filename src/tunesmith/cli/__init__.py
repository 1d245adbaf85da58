"""The tunesmith command line: one table of subcommands, each calling one stage's entry function."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from tunesmith.cli.api import api_app, worker_cmd
from tunesmith.cli.common import FORMAT_HELP, current_workspace
from tunesmith.cli.data import data_app
from tunesmith.cli.eval import eval_app
from tunesmith.cli.export import export_cmd
from tunesmith.cli.monitor import monitor_cmd
from tunesmith.cli.runs import runs_app
from tunesmith.cli.serve import serve_cmd
from tunesmith.cli.train import train_cmd
from tunesmith.cli.tune import tune_app
from tunesmith.cli.ui import ui_cmd
from tunesmith.errors import UserError
from tunesmith.ui import console

app = typer.Typer(
    help="Turn a general LLM into a specialist: prepare data, fine-tune, evaluate against the base.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# The command groups in the order of the pipeline (help lists the single commands first: quickstart,
# train, then the ones registered by their decorators below).
app.add_typer(data_app, name="data")
app.add_typer(eval_app, name="eval")
app.add_typer(runs_app, name="runs")


@app.command()
def quickstart(
    examples: int = typer.Option(500, min=1, help="how many demo tickets to generate"),
    epochs: int = typer.Option(
        2, min=1, help="training epochs (two learn the task while the default general-skills replay keeps the probe; docs/forgetting.md)"
    ),
    seed: int = typer.Option(0, help="drives the data, the split and the initialisation"),
) -> None:
    """The whole loop on the embedded defaults: demo data, base eval, LoRA fine-tune, tuned eval, report."""
    from tunesmith.cli.quickstart import run_quickstart

    run_quickstart(current_workspace(), n_examples=examples, epochs=epochs, seed=seed)


app.command("train")(train_cmd)


@app.command("score")
def score_cmd(
    predictions: Path = typer.Argument(..., help='JSONL of {"id": ..., "prediction": ...} lines ("output" or "text" also work)'),
    references: Path = typer.Option(..., "--references", "-r", help="any file `data prepare` reads; the final assistant message is the reference"),
    metrics: str | None = typer.Option(
        None,
        "--metrics",
        "-m",
        help="comma-separated: exact_match, accuracy, f1, confusion_matrix, rouge, bleu, chrf, valid_json, field_accuracy, json_schema, length (default: chosen by task)",
    ),
    json_schema: Path | None = typer.Option(None, "--json-schema", help="JSON Schema file the answers must conform to (adds schema_valid)"),
    custom: list[str] | None = typer.Option(None, "--custom", help="your metric as module:function, fn(predictions, references) -> float | dict (repeatable)"),
    format: str | None = typer.Option(None, "--format", help="format of the references file: " + FORMAT_HELP),
    out: Path | None = typer.Option(None, "--out", help="folder for report.json and scores.jsonl (per-example scores)"),
) -> None:
    """Score any system's outputs against references without loading a model (also `tunesmith eval score`)."""
    from tunesmith.eval.score import print_score_report, score_files, write_score_report

    names = [m for m in metrics.split(",") if m.strip()] if metrics is not None else None
    report = score_files(predictions, references, names, json_schema_file=json_schema, custom=custom, fmt=format)
    print_score_report(report)
    if out is not None:
        summary, rows = write_score_report(report, out)
        console.print(f"report: {summary}\nper-example scores: {rows}")


eval_app.command("score")(score_cmd)  # `tunesmith score` and `tunesmith eval score` are one command


@app.command()
def generate(
    run: str = typer.Argument(..., help="run id, the run's --name, or run folder"),
    prompt: str = typer.Option(..., "--prompt", "-p", help="the user message"),
    system: str | None = typer.Option(None, help="system message (default: the one the run was trained with, if any)"),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1, max=8192),
) -> None:
    """One answer from a tuned model, with its training chat template, stopping at end-of-turn."""
    from tunesmith.workflows import load_run

    typer.echo(load_run(run, workspace=current_workspace()).generate(prompt, system=system, max_new_tokens=max_new_tokens))


@app.command()
def chat(
    run: str = typer.Argument(..., help="run id, the run's --name, or run folder"),
    system: str | None = typer.Option(None, help="system message (default: the one the run was trained with, if any)"),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1, max=8192),
) -> None:
    """Talk to a tuned model. Empty line or Ctrl-D ends; /reset clears the conversation."""
    from tunesmith.cli.chat import interactive
    from tunesmith.workflows import load_run

    interactive(load_run(run, workspace=current_workspace()).chat(system, max_new_tokens))


app.command("serve")(serve_cmd)


@app.command()
def classify(
    run: str = typer.Argument(..., help="a classification run's id, name or folder"),
    text: list[str] | None = typer.Option(None, "--text", "-t", help="a text to classify (repeatable)"),
    file: Path | None = typer.Option(None, "--file", "-f", help="many texts: a .txt file (one a line) or any file `data prepare` reads (its user turns)"),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
) -> None:
    """A trained classifier's label and probability: `LABEL<TAB>PROBABILITY` for one --text; JSONL (one object a text, with every label's probability) otherwise."""
    import json

    from tunesmith.eval.classification import classify_texts

    texts = list(text or [])
    if file is not None:
        texts += _texts_of(file)
    if not texts:
        raise UserError("nothing to classify", fix='give --text "..." or --file FILE')
    found = classify_texts(current_workspace(), run, texts, batch_size)
    if file is None and len(found) == 1:
        typer.echo(f"{found[0]['label']}\t{found[0]['probability']:.4f}")
        return
    for row in found:
        typer.echo(json.dumps(row, ensure_ascii=False))


def _texts_of(path: Path) -> list[str]:
    if path.suffix.lower() == ".txt":
        if not path.is_file():
            raise UserError(f"no such file: {path}", fix="check the path")
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    from tunesmith.data.formats import read_records

    texts = []
    for line, record in read_records(path):
        found = _text_of(record)
        if found is None:
            raise UserError(
                "no text in this record",
                where=f"{path}:{line}",
                fix='give each record a "text" (or "prompt", or user messages), or use a .txt file with one text a line',
            )
        texts.append(found)
    return texts


def _text_of(record: object) -> str | None:
    """What a classifier reads from one record: its text, prompt, or user turns (as in training)."""
    if not isinstance(record, dict):
        return None
    for key in ("text", "prompt", "input_text"):
        if isinstance(record.get(key), str) and record[key].strip():
            return record[key]
    turns = record.get("messages")
    users = [m.get("content") for m in turns if isinstance(m, dict) and m.get("role") == "user"] if isinstance(turns, list) else []
    return "\n".join(u for u in users if isinstance(u, str)) or None


app.command("export")(export_cmd)  # after the commands that use a run in tunesmith: export takes it elsewhere
app.command("monitor")(monitor_cmd)  # watches what serve answers
app.add_typer(tune_app, name="tune")  # many runs of train and eval, searched
app.add_typer(api_app, name="api")  # the service over all of the above
app.command("worker")(worker_cmd)
app.command("ui")(ui_cmd)  # the same service, named for people who came for the dashboard


TRUST_FLAG = "--trust-remote-code"


@app.callback()
def _options(
    trust_remote_code: bool = typer.Option(
        False,
        TRUST_FLAG,
        help="let a model folder run its own Python (auto_map), on any command that loads a model (also TUNESMITH_TRUST_REMOTE_CODE=1); "
        "never allowed by a file such as a run's config.yaml",
    ),
) -> None:
    if trust_remote_code:
        from tunesmith.config import allow_remote_code

        allow_remote_code()


def _take_trust_flag(argv: list[str]) -> list[str]:
    """--trust-remote-code is accepted after any command too (`tunesmith generate RUN --trust-remote-code`)."""
    if TRUST_FLAG in argv:
        from tunesmith.config import allow_remote_code

        allow_remote_code()
    return [a for a in argv if a != TRUST_FLAG]


def main() -> None:
    """Usage errors exit 2 through Typer; a UserError from any stage is printed without a traceback and exits 2."""
    try:
        from tunesmith.data.formats import expand_map_args

        # `--map a=b c=d` parses the same in every command that takes --map (formats.expand_map_args).
        args = expand_map_args(_take_trust_flag(sys.argv[1:]))
        app(args=args, prog_name="tunesmith")
    except UserError as exc:
        from rich.markup import escape

        console.print(f"[red]error:[/] {escape(exc.render())}", highlight=False, soft_wrap=True)  # paths stay whole, to copy
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted")
        sys.exit(130)
