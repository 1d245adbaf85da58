"""The tunesmith command line: one table of subcommands, each calling one stage's entry function."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from tunesmith.errors import ProblemList, UserError
from tunesmith.ui import console

app = typer.Typer(
    help="Turn a general LLM into a specialist: prepare data, fine-tune, evaluate against the base.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Prepare and inspect datasets.", no_args_is_help=True)
runs_app = typer.Typer(help="The registry of runs and their evaluations.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(runs_app, name="runs")

FORMAT_HELP = "messages | prompt_completion | input_output | alpaca | sharegpt | classification (auto-detected when omitted)"


def _workspace():
    from tunesmith.workspace import Workspace

    return Workspace.from_env()


@app.command()
def quickstart(
    examples: int = typer.Option(500, min=1, help="how many demo tickets to generate"),
    epochs: int = typer.Option(1, min=1, help="training epochs (one reaches the target on the demo task)"),
    seed: int = typer.Option(0, help="drives the data, the split and the initialisation"),
) -> None:
    """The whole loop on the embedded defaults: demo data, base eval, LoRA fine-tune, tuned eval, report."""
    from tunesmith.cli.quickstart import run_quickstart

    run_quickstart(_workspace(), n_examples=examples, epochs=epochs, seed=seed)


@data_app.command("prepare")
def data_prepare(
    file: Path = typer.Argument(..., help="JSONL, JSON (array), CSV or Parquet file of examples"),
    format: Optional[str] = typer.Option(None, "--format", help=FORMAT_HELP),
    map_pairs: Optional[list[str]] = typer.Option(None, "--map", help="rename the file's keys: canonical=yours, e.g. --map prompt=question completion=answer (or repeat --map, or comma-separate)"),
    out: Optional[str] = typer.Option(None, "--out", help="dataset name (default: the file's name; folder-file for generic names like train.csv)"),
    seed: int = typer.Option(0, help="seed of the split"),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="leave out lines that cannot be read as examples (listed in the manifest and report) instead of refusing the file"),
    split: str = typer.Option("0.8,0.1,0.1", help="train,validation,test ratios"),
    clean: bool = typer.Option(True, "--clean/--no-clean", help="Unicode repair, whitespace, empty examples, output-style lint"),
    normalise_outputs: bool = typer.Option(False, "--normalise-outputs", help="rewrite label spelling variants to the most common one"),
    pii: str = typer.Option("report", "--pii", help="off | report | redact | drop"),
    pii_ner: bool = typer.Option(True, "--pii-ner/--no-pii-ner", help="find person names with spaCy NER (about 60 examples/s)"),
    pii_allow: Optional[list[str]] = typer.Option(None, "--pii-allow", help="never personal data, e.g. a product or machine name (repeat, comma-separate, or @FILE: one a line)"),
    dedup: bool = typer.Option(True, "--dedup/--no-dedup", help="remove exact duplicates"),
    near_dedup: bool = typer.Option(True, "--near-dedup/--no-near-dedup", help="remove near-duplicates too (MinHash LSH)"),
    near_threshold: float = typer.Option(0.85, "--near-threshold", help="Jaccard similarity that counts as a near-duplicate"),
    group_by: Optional[str] = typer.Option(None, "--group-by", help="meta field whose groups never straddle splits, e.g. customer_id"),
    validation_file: Optional[Path] = typer.Option(None, "--validation-file", help="use this file as the validation split"),
    test_file: Optional[Path] = typer.Option(None, "--test-file", help="use this file as the test split"),
    model: Optional[str] = typer.Option(None, "--model", help="count tokens with this model's tokenizer; examples longer than --max-seq-len stay out of validation and test"),
    max_seq_len: Optional[int] = typer.Option(None, "--max-seq-len", help="with --model: the training length examples are checked against (default: train.max_seq_len's default)"),
    augment: int = typer.Option(0, "--augment", help="paraphrases per training example (0: none); synthetic examples stay in train"),
    augment_fraction: float = typer.Option(1.0, "--augment-fraction", help="share of training examples to paraphrase"),
    augment_model: str = typer.Option("smollm2-135m-instruct", "--augment-model", help="local model that paraphrases"),
    augment_url: Optional[str] = typer.Option(None, "--augment-url", help="OpenAI-compatible base URL to paraphrase with instead (key from $OPENAI_API_KEY)"),
    augment_endpoint_model: Optional[str] = typer.Option(None, "--augment-endpoint-model", help="model name at --augment-url"),
) -> None:
    """Check, clean, scrub, de-duplicate, split by seed and register a dataset; its content hash is its version."""
    from tunesmith.cli.data_report import summarise_dataset
    from tunesmith.data.formats import parse_mapping
    from tunesmith.data.pii import read_allowlist
    from tunesmith.workflows import prepare_dataset

    options = {
        "mapping": parse_mapping(map_pairs or []), "skip_invalid": skip_invalid, "clean": clean, "normalise_outputs": normalise_outputs, "pii": pii, "pii_ner": pii_ner,
        "pii_allow": read_allowlist(pii_allow or []),
        "dedup": dedup, "near_dedup": near_dedup, "near_threshold": near_threshold, "group_by": group_by,
        "validation_file": validation_file, "test_file": test_file,
        "augment": {"per_example": augment, "fraction": augment_fraction, "model": augment_model, "url": augment_url,
                    "endpoint_model": augment_endpoint_model} if augment else None,
    }
    dataset = prepare_dataset(file, name=out, format=format, seed=seed, ratios=_parse_ratios(split), options=options, model=model, max_seq_len=max_seq_len,
                              source="command-line flags")  # workspace None: $TUNESMITH_HOME, opened once the flags are checked
    summarise_dataset(dataset, model)


@data_app.command("stats")
def data_stats(
    source: str = typer.Argument(..., help="a prepared dataset's name, or a file"),
    model: Optional[str] = typer.Option(None, "--model", help="count tokens with this model's tokenizer and estimate training time on this machine"),
    format: Optional[str] = typer.Option(None, "--format", help=FORMAT_HELP),
) -> None:
    """Counts, roles, turns, labels, token lengths (with a histogram PNG), tokens per epoch and time per epoch."""
    from tunesmith.cli.data_report import stats_command

    stats_command(_workspace(), source, model, format)


@data_app.command("validate")
def data_validate(
    file: Path = typer.Argument(..., help="JSONL, JSON (array), CSV or Parquet file of examples"),
    format: Optional[str] = typer.Option(None, "--format", help="messages | prompt_completion | input_output | alpaca | sharegpt | classification (auto-detected when omitted)"),
    map_pairs: Optional[list[str]] = typer.Option(None, "--map", help="rename the file's keys: canonical=yours, e.g. --map prompt=question completion=answer (or repeat --map, or comma-separate)"),
    model: Optional[str] = typer.Option(None, "--model", help="count tokens with this model's tokenizer and chat template ('smollm2-135m-instruct', a local HF folder or a hub id)"),
    max_seq_len: Optional[int] = typer.Option(None, "--max-seq-len", help="with --model: flag examples longer than this (default: train.max_seq_len's default)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object instead of a table"),
    pii: bool = typer.Option(False, "--pii", help="also look for personal data, as `prepare --pii report` does (one warning per type, with examples)"),
    pii_ner: bool = typer.Option(True, "--pii-ner/--no-pii-ner", help="with --pii: find person names with spaCy NER"),
    pii_allow: Optional[list[str]] = typer.Option(None, "--pii-allow", help="with --pii: never personal data, e.g. a product name (repeat, comma-separate, or @FILE)"),
) -> None:
    """Check every line of a training file and list each problem with its line and fix; exit 2 if any error."""
    from tunesmith.data.formats import parse_mapping
    from tunesmith.data.validate import load_tokenizer_only, print_validation, validate_file

    mapping = parse_mapping(map_pairs or [])
    if max_seq_len is not None and (model is None or max_seq_len < 1):
        raise UserError("--max-seq-len needs --model and a positive number", fix="add --model smollm2-135m-instruct (or your base model) to count tokens")
    from tunesmith.data.pii import read_allowlist

    allow = read_allowlist(pii_allow or [])
    tokenizer = load_tokenizer_only(model) if model else None
    report = validate_file(file, format, mapping, tokenizer, max_seq_len, pii=pii, pii_ner=pii_ner, pii_allow=allow)  # type: ignore[arg-type]
    print_validation(report, as_json)
    if not report.ok:
        raise typer.Exit(2)


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
    method: Optional[str] = typer.Option(None, help="lora | qlora | dora | full | prompt_tuning | prefix_tuning (docs/training.md: when to use each)"),
    task: Optional[str] = typer.Option(None, help="causal_lm (write answers) | classification (a head predicts the label; default model all-minilm-l6-v2)"),
    epochs: Optional[str] = typer.Option(None, help="passes over the training split, or auto (chosen from the number of examples)"),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="stop after this many optimiser steps (overrides --epochs)"),
    lr: Optional[str] = typer.Option(None, help="peak learning rate (default: the method's), or auto (scaled with the batch)"),
    lr_multiplier: Optional[float] = typer.Option(None, "--lr-multiplier", help="peak lr as a multiple of the method's default"),
    batch_size: Optional[str] = typer.Option(None, "--batch-size", help="examples per micro-batch, or auto (from the device)"),
    grad_accum: Optional[str] = typer.Option(None, "--grad-accum", help="micro-batches per optimiser step, or auto (from the number of examples)"),
    name: Optional[str] = typer.Option(None, help="a label for the run"),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="with --data FILE: leave out lines that cannot be read as examples (listed in the dataset's manifest)"),
    resume: Optional[str] = typer.Option(None, "--resume", help="continue this run (id or folder) from its latest checkpoint, with its own config"),
    max_time: Optional[float] = typer.Option(None, "--max-time", help="seconds of training (whole run); stops cleanly with a checkpoint, resumable"),
    max_cost: Optional[float] = typer.Option(None, "--max-cost", help="money to spend at --price-per-hour; stops cleanly with a checkpoint, resumable"),
    price_per_hour: Optional[float] = typer.Option(None, "--price-per-hour", help="what an hour of this machine costs; the estimate shows the run's cost"),
    report_to: Optional[str] = typer.Option(None, "--report-to", help="comma-separated trackers: tensorboard, mlflow, wandb (offline)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the estimate (tokens, steps, time, memory, cost) and exit; creates no run (one process, whatever --nproc)"),
    nproc: int = typer.Option(1, "--nproc", min=1, help="data-parallel processes on this machine (gloo on CPU, nccl on GPU); same result as 1 (dropout aside: each process draws its own masks)"),
    accelerate_config: Optional[Path] = typer.Option(
        None, "--accelerate-config", help="an accelerate YAML (from `accelerate config`): run under `accelerate launch`; FSDP (fsdp_version 2) shards the model, DEEPSPEED runs ZeRO stage 1 or 2"
    ),
) -> None:
    """Fine-tune a base model; writes a run folder and registers the run. --resume continues an interrupted one."""
    from tunesmith.config import load_run_spec
    from tunesmith.train.recipe import train
    from tunesmith.train.run.guards import Budget

    budget = Budget(max_time, max_cost, price_per_hour)
    flag_problems: list[str] = []  # reported together with the config's own, all at once
    overrides = {
        "model.name": model, "train.task": task, "train.method": method, "train.epochs": _number_or_auto("--epochs", epochs, int, flag_problems),
        "train.max_steps": max_steps, "train.lr": _number_or_auto("--lr", lr, float, flag_problems), "train.lr_multiplier": lr_multiplier,
        "train.batch_size": _number_or_auto("--batch-size", batch_size, int, flag_problems),
        "train.grad_accum": _number_or_auto("--grad-accum", grad_accum, int, flag_problems),
        "name": name, "train.price_per_hour": price_per_hour,
        "train.report_to": [t.strip() for t in report_to.split(",") if t.strip()] if report_to else None,
    }
    if data is not None:
        overrides["data"] = _data_source(data, flag_problems)
    overrides["data.prepare.skip_invalid"] = True if skip_invalid else None
    launcher = None
    if nproc > 1 or accelerate_config is not None:
        from tunesmith.train.parallel.distributed import launched

        if launched():  # e.g. `accelerate launch ... -m tunesmith train --nproc 2` would start processes inside processes
            raise UserError("this process was already started by a launcher as one of several", where="--nproc / --accelerate-config",
                            fix="drop --nproc and --accelerate-config here: the launcher decides the processes")
    if accelerate_config is not None:
        from tunesmith.train.parallel.accel import read_accelerate_config

        launcher = read_accelerate_config(accelerate_config)
    if resume is not None:
        from tunesmith.train.resume import resumable_run
        from tunesmith.train.resume import resume as continue_run

        if flag_problems:
            raise ProblemList("invalid command-line flags", flag_problems, fix="correct the flags named above")

        overrides.pop("train.price_per_hour")  # a price is not part of the run; it only feeds the budget
        run_dir = resumable_run(_workspace(), resume, config, overrides)
        if launcher is not None:
            from tunesmith.registry.runfolder import read_config
            from tunesmith.train.parallel.accel import check_spec
            from tunesmith.train.parallel.accel import launch as accelerate_launch
            from tunesmith.train.parallel.distributed import budget_args

            check_spec(launcher, read_config(run_dir))
            raise typer.Exit(accelerate_launch(launcher, ["--resume", str(run_dir), *budget_args(budget)], nproc))
        if nproc > 1:
            from tunesmith.train.parallel.distributed import budget_args, launch

            raise typer.Exit(launch(["--resume", str(run_dir), *budget_args(budget)], nproc))
        result = continue_run(_workspace(), run_dir, budget)
        if not _report_here():
            return
    else:
        spec = load_run_spec(config, overrides, flag_problems)
        from tunesmith.train.run.tracking import check_installed

        check_installed(spec.train.report_to)
        if launcher is not None:
            from tunesmith.train.parallel.accel import check_spec

            check_spec(launcher, spec)
        if dry_run:
            from tunesmith.train.dry_run import dry_run as estimate_only

            estimate_only(spec, _workspace())
            return
        if nproc > 1 or launcher is not None:
            from tunesmith.train.parallel.accel import launch_spec
            from tunesmith.train.parallel.distributed import budget_args
            from tunesmith.train.recipe import prepared_for_launch

            raise typer.Exit(launch_spec(prepared_for_launch(spec, _workspace()), nproc, budget_args(budget), launcher))
        result = train(spec, _workspace(), budget)
        if not _report_here():
            return
    info = result.info
    if info.status == "stopped":
        console.print(f"[yellow]run {info.run_id} stopped[/]: {info.stop_reason}; continue with `tunesmith train --resume {info.run_id}`")
    else:
        scores = "".join(f", {name} {value}" for name, value in (info.best_metrics or {}).items())  # a classifier's accuracy and macro-F1
        console.print(f"[green]run {info.run_id} completed[/]: best at step {info.best_step} (epoch {info.best_epoch}), validation loss {info.best_val_loss}{scores}")
        if info.stop_reason:
            console.print(info.stop_reason)
    console.print(f"run folder: {result.run_dir}")
    typer.echo(info.run_id)


def _data_source(value: str, problems: list[str]) -> dict[str, str]:
    """--data: an existing file, or a value that looks like one (a folder in it, a data file's suffix),
    is a file to prepare; anything else names a prepared dataset. A missing file is added to `problems`
    (and still given as the source, so the config is not also told it has no data)."""
    from tunesmith.data.formats import PARQUET_SUFFIXES

    path = Path(value).expanduser()
    if path.is_file():
        return {"path": str(path)}
    if path.suffix.lower() in (".jsonl", ".json", ".csv", *PARQUET_SUFFIXES) or "/" in value or "\\" in value:
        problems.append(f"--data: no such file: {value}; check the path, or give the name of a dataset made by `tunesmith data prepare`")
        return {"path": str(path)}
    return {"dataset": value}


def _number_or_auto(flag: str, text: str | None, kind: type, problems: list[str]) -> int | float | str | None:
    """What the config field accepts, typed: a number or 'auto' (the field's own validator checks the range); else a problem."""
    if text is None:
        return None
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return kind(text)
    except ValueError:
        example = "3" if kind is int else "2e-4"
        problems.append(f"{flag} {text!r} is not a {'whole number' if kind is int else 'number'} or 'auto'; write e.g. {flag} {example}, or {flag} auto")
        return None


def _report_here() -> bool:
    """Only process 0 of a data-parallel run reports; every process leaves the process group."""
    from tunesmith.train.parallel.distributed import finish, is_main

    main_process = is_main()
    finish()
    return main_process


@app.command("score")
def score_cmd(
    predictions: Path = typer.Argument(..., help='JSONL of {"id": ..., "prediction": ...} lines ("output" or "text" also work)'),
    references: Path = typer.Option(..., "--references", "-r", help="any file `data prepare` reads; the final assistant message is the reference"),
    metrics: Optional[str] = typer.Option(None, "--metrics", "-m", help="comma-separated: exact_match, accuracy, f1, confusion_matrix, rouge, bleu, chrf, valid_json, field_accuracy, json_schema, length (default: chosen by task)"),
    json_schema: Optional[Path] = typer.Option(None, "--json-schema", help="JSON Schema file the answers must conform to (adds schema_valid)"),
    custom: Optional[list[str]] = typer.Option(None, "--custom", help="your metric as module:function, fn(predictions, references) -> float | dict (repeatable)"),
    format: Optional[str] = typer.Option(None, "--format", help="format of the references file: " + FORMAT_HELP),
    out: Optional[Path] = typer.Option(None, "--out", help="folder for report.json and scores.jsonl (per-example scores)"),
) -> None:
    """Score any system's outputs against references without loading a model (also `tunesmith eval score`)."""
    from tunesmith.eval.score import print_score_report, score_files, write_score_report

    names = [m for m in metrics.split(",") if m.strip()] if metrics is not None else None
    report = score_files(predictions, references, names, json_schema_file=json_schema, custom=custom, fmt=format)
    print_score_report(report)
    if out is not None:
        summary, rows = write_score_report(report, out)
        console.print(f"report: {summary}\nper-example scores: {rows}")


@app.command()
def generate(
    run: str = typer.Argument(..., help="run id, the run's --name, or run folder"),
    prompt: str = typer.Option(..., "--prompt", "-p", help="the user message"),
    system: Optional[str] = typer.Option(None, help="system message (default: the one the run was trained with, if any)"),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1, max=8192),
) -> None:
    """One answer from a tuned model, with its training chat template, stopping at end-of-turn."""
    from tunesmith.workflows import load_run

    typer.echo(load_run(run, workspace=_workspace()).generate(prompt, system=system, max_new_tokens=max_new_tokens))


@app.command()
def chat(
    run: str = typer.Argument(..., help="run id, the run's --name, or run folder"),
    system: Optional[str] = typer.Option(None, help="system message (default: the one the run was trained with, if any)"),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1, max=8192),
) -> None:
    """Talk to a tuned model. Empty line or Ctrl-D ends; /reset clears the conversation."""
    from tunesmith.cli.chat import interactive
    from tunesmith.workflows import load_run

    interactive(load_run(run, workspace=_workspace()).chat(system, max_new_tokens))


@app.command()
def classify(
    run: str = typer.Argument(..., help="a classification run's id, name or folder"),
    text: Optional[list[str]] = typer.Option(None, "--text", "-t", help="a text to classify (repeatable)"),
    file: Optional[Path] = typer.Option(None, "--file", "-f", help="many texts: a .txt file (one a line) or any file `data prepare` reads (its user turns)"),
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
    found = classify_texts(_workspace(), run, texts, batch_size)
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
            raise UserError("no text in this record", where=f"{path}:{line}", fix='give each record a "text" (or "prompt", or user messages), or use a .txt file with one text a line')
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


@runs_app.command("list")
def runs_list() -> None:
    """Every run with its base model, dataset version and headline scores."""
    from tunesmith.cli.report import print_runs

    print_runs(_workspace())


@runs_app.command("show")
def runs_show(run: str = typer.Argument(..., help="run id or the run's --name")) -> None:
    """One run: config, dataset, training result and evaluations."""
    from tunesmith.cli.report import print_run

    print_run(_workspace(), run)


@runs_app.command("reindex")
def runs_reindex() -> None:
    """Rebuild the registry (registry.db) from the run and dataset folders, the truth; a damaged registry is kept beside it."""
    from tunesmith.cli.report import print_reindex

    print_reindex(_workspace())


from tunesmith.cli.eval import register as _register_eval  # noqa: E402
from tunesmith.cli.eval import route_argv as _route_eval

_register_eval(app, runs_app)

TRUST_FLAG = "--trust-remote-code"


@app.callback()
def _options(
    trust_remote_code: bool = typer.Option(
        False, TRUST_FLAG, help="let a model folder run its own Python (auto_map), on any command that loads a model (also TUNESMITH_TRUST_REMOTE_CODE=1); "
        "never allowed by a file such as a run's config.yaml"
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
        args, _ = _route_eval(expand_map_args(_take_trust_flag(sys.argv[1:])))  # `eval RUN` is one command; `eval judge|score|review-*` are others
        app(args=args, prog_name="tunesmith")
    except UserError as exc:
        from rich.markup import escape

        console.print(f"[red]error:[/] {escape(exc.render())}", highlight=False, soft_wrap=True)  # paths stay whole, to copy
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted")
        sys.exit(130)
