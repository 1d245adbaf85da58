"""`tunesmith data`: validate, prepare and inspect datasets (the work is in data/)."""

from __future__ import annotations

from pathlib import Path

import typer

from tunesmith.cli.common import FORMAT_HELP, current_workspace
from tunesmith.errors import UserError

data_app = typer.Typer(help="Prepare and inspect datasets.", no_args_is_help=True)


@data_app.command("prepare")
def data_prepare(
    file: Path = typer.Argument(..., help="JSONL, JSON (array), CSV or Parquet file of examples"),
    format: str | None = typer.Option(None, "--format", help=FORMAT_HELP),
    map_pairs: list[str] | None = typer.Option(
        None, "--map", help="rename the file's keys: canonical=yours, e.g. --map prompt=question completion=answer (or repeat --map, or comma-separate)"
    ),
    out: str | None = typer.Option(None, "--out", help="dataset name (default: the file's name; folder-file for generic names like train.csv)"),
    seed: int = typer.Option(0, help="seed of the split"),
    skip_invalid: bool = typer.Option(
        False, "--skip-invalid", help="leave out lines that cannot be read as examples (listed in the manifest and report) instead of refusing the file"
    ),
    split: str = typer.Option("0.8,0.1,0.1", help="train,validation,test ratios"),
    clean: bool = typer.Option(True, "--clean/--no-clean", help="Unicode repair, whitespace, empty examples, output-style lint"),
    normalise_outputs: bool = typer.Option(False, "--normalise-outputs", help="rewrite label spelling variants to the most common one"),
    pii: str = typer.Option("report", "--pii", help="off | report | redact | drop"),
    pii_ner: bool = typer.Option(True, "--pii-ner/--no-pii-ner", help="find person names with spaCy NER (about 60 examples/s)"),
    pii_allow: list[str] | None = typer.Option(
        None, "--pii-allow", help="never personal data, e.g. a product or machine name (repeat, comma-separate, or @FILE: one a line)"
    ),
    dedup: bool = typer.Option(True, "--dedup/--no-dedup", help="remove exact duplicates"),
    near_dedup: bool = typer.Option(True, "--near-dedup/--no-near-dedup", help="remove near-duplicates too (MinHash LSH)"),
    near_threshold: float = typer.Option(0.85, "--near-threshold", help="Jaccard similarity that counts as a near-duplicate"),
    group_by: str | None = typer.Option(None, "--group-by", help="meta field whose groups never straddle splits, e.g. customer_id"),
    validation_file: Path | None = typer.Option(None, "--validation-file", help="use this file as the validation split"),
    test_file: Path | None = typer.Option(None, "--test-file", help="use this file as the test split"),
    model: str | None = typer.Option(
        None, "--model", help="count tokens with this model's tokenizer; examples longer than --max-seq-len stay out of validation and test"
    ),
    max_seq_len: int | None = typer.Option(
        None, "--max-seq-len", help="with --model: the training length examples are checked against (default: train.max_seq_len's default)"
    ),
    augment: int = typer.Option(0, "--augment", help="paraphrases per training example (0: none); synthetic examples stay in train"),
    augment_fraction: float = typer.Option(1.0, "--augment-fraction", help="share of training examples to paraphrase"),
    augment_model: str = typer.Option("smollm2-135m-instruct", "--augment-model", help="local model that paraphrases"),
    augment_url: str | None = typer.Option(None, "--augment-url", help="OpenAI-compatible base URL to paraphrase with instead (key from $OPENAI_API_KEY)"),
    augment_endpoint_model: str | None = typer.Option(None, "--augment-endpoint-model", help="model name at --augment-url"),
) -> None:
    """Check, clean, scrub, de-duplicate, split by seed and register a dataset; its content hash is its version."""
    from tunesmith.cli.data_report import summarise_dataset
    from tunesmith.data.formats import parse_mapping
    from tunesmith.data.pii import read_allowlist
    from tunesmith.workflows import prepare_dataset

    options = {
        "mapping": parse_mapping(map_pairs or []),
        "skip_invalid": skip_invalid,
        "clean": clean,
        "normalise_outputs": normalise_outputs,
        "pii": pii,
        "pii_ner": pii_ner,
        "pii_allow": read_allowlist(pii_allow or []),
        "dedup": dedup,
        "near_dedup": near_dedup,
        "near_threshold": near_threshold,
        "group_by": group_by,
        "validation_file": validation_file,
        "test_file": test_file,
        "augment": {"per_example": augment, "fraction": augment_fraction, "model": augment_model, "url": augment_url, "endpoint_model": augment_endpoint_model}
        if augment
        else None,
    }
    dataset = prepare_dataset(
        file,
        name=out,
        format=format,
        seed=seed,
        ratios=_parse_ratios(split),
        options=options,
        model=model,
        max_seq_len=max_seq_len,
        source="command-line flags",
    )  # workspace None: $TUNESMITH_HOME, opened once the flags are checked
    summarise_dataset(dataset, model)


@data_app.command("from-logs")
def data_from_logs(
    model: str | None = typer.Argument(None, help="the served model: the name clients asked for, or its run id"),
    out: str | None = typer.Option(None, "--out", help="name of the dataset version to make (the sheet goes to <home>/reviews/from-logs/NAME/)"),
    only: str = typer.Option("all", "--only", help="all | alerted (requests `tunesmith monitor` alerts name) | low-confidence (see --below)"),
    since: str | None = typer.Option(None, "--since", help="traffic from this long ago (30m, 24h, 7d) or this time (2026-12-01T08:00, UTC); default: all"),
    until: str | None = typer.Option(None, "--until", help="traffic before this (same forms as --since); default: now"),
    below: float = typer.Option(0.5, "--below", min=0.0, max=1.0, help="--only low-confidence: answers whose mean token probability is under this"),
    limit: int | None = typer.Option(None, "--limit", min=1, help="at most the N most recent requests"),
    import_sheet: Path | None = typer.Option(None, "--import", help="a filled review.csv: make the dataset version from its reviewed rows"),
    key: Path | None = typer.Option(None, "--key", help="with --import: the from-logs.json written with the sheet (default: beside it)"),
) -> None:
    """Served traffic back into training: logged requests become a review sheet; `--import` turns the reviewed
    answers into a new dataset version whose manifest names its parent dataset and the traffic window."""
    from tunesmith.ui import console

    if import_sheet is not None:
        from tunesmith.workflows import dataset_from_review

        if model is not None:
            raise UserError("--import takes the filled sheet alone", where="MODEL", fix=f"tunesmith data from-logs --import {import_sheet} [--out NAME]")
        dataset = dataset_from_review(import_sheet, out=out, key=key)
        m = dataset.manifest
        window = m.traffic_window or {}
        console.print(f"dataset {m.name} version {m.version}: {m.counts['train']} train / {m.counts['validation']} validation / {m.counts['test']} test")
        console.print(f"  from the traffic of {window.get('model')} (run {window.get('run_id') or '-'}); parent dataset {m.parent_dataset or '-'}")
        run = window.get("run_id")
        if run:
            console.print(f"continue training on it: tunesmith train --from {run} --data {m.name}  (data.replay keeps the parent's examples in)")
        return
    from tunesmith.workflows import logs_to_review

    if model is None or out is None:
        raise UserError("from-logs needs the served model and a name for the new dataset", fix="tunesmith data from-logs MODEL --out NAME [--only ...]")
    made = logs_to_review(model, out=out, only=only, since=since, until=until, below=below, limit=limit)
    console.print(f"{made.rows} request(s) to review: {made.csv}\n  the same as a page where answers can be rewritten: {made.html}")
    console.print(f"  the requests as logged (keep it with the sheet): {made.key}")
    console.print(f"when reviewed: tunesmith data from-logs --import {made.csv}")


@data_app.command("stats")
def data_stats(
    source: str = typer.Argument(..., help="a prepared dataset's name, or a file"),
    model: str | None = typer.Option(None, "--model", help="count tokens with this model's tokenizer and estimate training time on this machine"),
    format: str | None = typer.Option(None, "--format", help=FORMAT_HELP),
) -> None:
    """Counts, roles, turns, labels, token lengths (with a histogram PNG), tokens per epoch and time per epoch."""
    from tunesmith.cli.data_report import stats_command

    stats_command(current_workspace(), source, model, format)


@data_app.command("validate")
def data_validate(
    file: Path = typer.Argument(..., help="JSONL, JSON (array), CSV or Parquet file of examples"),
    format: str | None = typer.Option(
        None,
        "--format",
        help="messages | prompt_completion | input_output | alpaca | sharegpt | classification | preference | prompt_chosen_rejected (auto-detected when omitted)",
    ),
    map_pairs: list[str] | None = typer.Option(
        None, "--map", help="rename the file's keys: canonical=yours, e.g. --map prompt=question completion=answer (or repeat --map, or comma-separate)"
    ),
    model: str | None = typer.Option(
        None, "--model", help="count tokens with this model's tokenizer and chat template ('smollm2-135m-instruct', a local HF folder or a hub id)"
    ),
    max_seq_len: int | None = typer.Option(None, "--max-seq-len", help="with --model: flag examples longer than this (default: train.max_seq_len's default)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object instead of a table"),
    pii: bool = typer.Option(False, "--pii", help="also look for personal data, as `prepare --pii report` does (one warning per type, with examples)"),
    pii_ner: bool = typer.Option(True, "--pii-ner/--no-pii-ner", help="with --pii: find person names with spaCy NER"),
    pii_allow: list[str] | None = typer.Option(
        None, "--pii-allow", help="with --pii: never personal data, e.g. a product name (repeat, comma-separate, or @FILE)"
    ),
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
