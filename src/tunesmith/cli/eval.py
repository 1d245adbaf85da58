"""The `eval` group: `tunesmith eval RUN` (the `run` subcommand, named or not), `eval judge`,
`eval review-export`, `eval review-import`, `eval score`; and `runs compare`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from tunesmith.cli.common import current_workspace
from tunesmith.errors import UserError
from tunesmith.ui import console, out


class EvalGroup(TyperGroup):
    """A click group whose first word, when it names no subcommand, is a run: `eval RUN ...` is
    `eval run RUN ...`, so the commonest command needs no subcommand word and the others are
    ordinary subcommands with their own --help. A run named like a subcommand is reached with
    `eval run NAME`."""

    def resolve_command(self, ctx: Any, args: list[str]) -> tuple[str | None, Any, list[str]]:
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            return "run", self.commands["run"], args
        return super().resolve_command(ctx, args)

    def format_usage(self, ctx: Any, formatter: Any) -> None:
        formatter.write_usage(ctx.command_path, "RUN [OPTIONS] | COMMAND [ARGS]...")

    def format_help(self, ctx: Any, formatter: Any) -> None:
        """The group's commands, then `eval RUN`'s own options: the command most readers came for."""
        super().format_help(ctx, formatter)
        run = self.commands["run"]
        run.format_help(run.make_context("run", ["--help"], parent=ctx, resilient_parsing=True), formatter)


eval_app = typer.Typer(
    cls=EvalGroup,
    no_args_is_help=True,
    help="Score a run on held-out data (`tunesmith eval RUN`, see `tunesmith eval run --help`), judge it, review it by hand, or score outputs made elsewhere.",
)


def _csv(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


@eval_app.command("run")
def eval_cmd(
    run: str = typer.Argument(..., help="run id or run folder"),
    split: str | None = typer.Option(None, help="validation | test (default: the run config's eval.split)"),
    compare_base: bool = typer.Option(False, "--compare-base", help="also evaluate the base model on the same examples"),
    compare: list[str] | None = typer.Option(
        None, "--compare", help="another run (id or folder) scored on this run's examples and compared metric by metric (repeatable)"
    ),
    baselines: str | None = typer.Option(None, "--baselines", help="prompting baselines for the base model: few-shot,system"),
    shots: int | None = typer.Option(None, "--shots", help="training examples shown as prior turns in the few-shot baseline (default 3)"),
    system_prompt: str | None = typer.Option(None, "--system-prompt", help="system prompt for the system baseline (or eval.system_prompt)"),
    forgetting: bool = typer.Option(False, "--forgetting", help="score base and tuned on the shipped general-skills probe (about 50 questions)"),
    forgetting_threshold: float | None = typer.Option(None, "--forgetting-threshold", help="warn when the probe score drops by more than this (default 0.05)"),
    metrics: str | None = typer.Option(None, "--metrics", "-m", help="comma-separated metric names (see `tunesmith score --help`); default: chosen by task"),
    custom: list[str] | None = typer.Option(None, "--custom", help="your metric as module:function, fn(predictions, references) -> float | dict (repeatable)"),
    perplexity: bool | None = typer.Option(None, "--perplexity/--no-perplexity", help="perplexity of the reference answers (on by default)"),
    max_new_tokens: int | None = typer.Option(None, "--max-new-tokens"),
    temperature: float | None = typer.Option(None, "--temperature", help="0 (default) decodes greedily; above 0 samples"),
    top_p: float | None = typer.Option(None, "--top-p", help="nucleus sampling mass when sampling"),
    seed: int | None = typer.Option(None, "--seed", help="seeds sampling, few-shot choice and the bootstrap"),
    batch_size: int | None = typer.Option(None, "--batch-size"),
    limit: int | None = typer.Option(None, help="only the first N examples"),
) -> None:
    """Score a run on a held-out split against its base, prompting baselines or other runs; results go into
    the run folder (eval/, report.html) and the registry. `tunesmith eval RUN` is the same command."""
    from tunesmith.cli.report import print_comparison, print_evaluation
    from tunesmith.eval.results import latest_evaluation
    from tunesmith.workflows import evaluate

    settings = {
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "limit": limit,
        "temperature": temperature,
        "top_p": top_p,
        "seed": seed,
        "metrics": _csv(metrics),
        "custom_metrics": custom or None,
        "perplexity": perplexity,
        "system_prompt": system_prompt,
        "shots": shots,
        "forgetting_threshold": forgetting_threshold,
    }
    done = evaluate(
        run,
        split=split,
        compare_base=compare_base,
        compare=compare or [],
        baselines=baselines,
        forgetting=forgetting,
        settings=settings,
        workspace=current_workspace(),
        source="the run config's eval section and command-line flags",
    )
    record = latest_evaluation(done.run_dir, done.split)
    if record is not None:
        print_evaluation(record)  # the table report.json and report.html hold, deltas included
    else:
        print_comparison(done.metrics, title=" vs ".join(done.metrics))
    console.print(f"report: {done.report}")


def _evaluated_together(run_dir: Path, split: str, models: list[str], hint: str) -> list[list[dict[str, Any]]]:
    """The answers of these models from the latest evaluation that scored them all in one call (same
    examples, same decoding), never one model's answers beside another's from a different evaluation."""
    from tunesmith.eval.results import evaluation_folder, load_evaluations

    kept = [r for r in load_evaluations(run_dir) if r["split"] == split]
    for record in kept:
        if all(m in record["models"] for m in models):
            return [_rows(run_dir, split, m, hint, folder=evaluation_folder(run_dir, record["id"])) for m in models]
    if kept:
        absent = [m for m in models if not any(m in r["models"] for r in kept)]
        what = f"{absent[0]} answers" if absent else f"{' and '.join(models)} answers from one evaluation"
        raise UserError(f"no evaluation of the {split} split in {run_dir / 'eval'} has {what}", fix=hint)
    return [_rows(run_dir, split, m, hint) for m in models]  # evaluated before evaluations were kept one by one


def _rows(run_dir: Path, split: str, model_id: str, hint: str, folder: Path | None = None) -> list[dict[str, Any]]:
    path = (folder or run_dir / "eval") / f"{split}-{model_id}.jsonl"
    if not path.is_file():
        raise UserError(f"no {model_id} answers on the {split} split in {run_dir / 'eval'}", fix=hint)
    from tunesmith.files import read_text

    rows = []
    for number, line in enumerate(read_text(path, fix=hint).splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            raise UserError(f"damaged line in {path.name} ({path})", where=f"{path}:{number}", fix=f"evaluate again: {hint}") from None
    return rows


def _local_ask(ref: str, max_new_tokens: int):
    """A judge that is a local model: a run id/folder (its tuned model) or a base model name/folder."""
    from tunesmith.chat_template import end_of_turn_ids
    from tunesmith.config import ModelSpec
    from tunesmith.models.artefact import load_tuned
    from tunesmith.models.generate import generate_one
    from tunesmith.models.loading import load_model
    from tunesmith.registry.runfolder import find_run, load_run_info, read_config

    try:
        run_dir = find_run(current_workspace(), ref)
    except UserError:
        model, tokenizer, _ = load_model(ModelSpec(name=ref))
    else:
        model, tokenizer = load_tuned(run_dir, load_run_info(run_dir), read_config(run_dir).model)
    eot = end_of_turn_ids(tokenizer)
    return lambda messages: generate_one(model, tokenizer, messages, eot, max_new_tokens)


@eval_app.command("judge")
def eval_judge(
    run: str = typer.Argument(..., help="run id or run folder, already evaluated with `tunesmith eval`"),
    judge_url: str | None = typer.Option(None, "--judge-url", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1 (key from --api-key-env)"),
    judge_model: str | None = typer.Option(None, "--judge-model", help="model name at --judge-url"),
    judge_local: str | None = typer.Option(
        None, "--judge-local", help="judge with a local model instead: a run id, or a model name such as smollm2-135m-instruct"
    ),
    rubric: str = typer.Option("correctness,helpfulness,tone", "--rubric", help="comma-separated criteria, each scored 1-5"),
    pairwise: str | None = typer.Option(
        None, "--pairwise", help="compare the tuned answers with 'base' or another run's (evaluated with --compare RUN2), both orders"
    ),
    split: str = typer.Option("test", help="validation | test"),
    limit: int | None = typer.Option(None, help="only the first N examples"),
    api_key_env: str = typer.Option("OPENAI_API_KEY", "--api-key-env", help="environment variable holding the endpoint's key"),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", help="reply budget of a local judge"),
) -> None:
    """LLM-as-a-judge on a run's evaluated answers: rubric grades (1-5) or position-swapped pairwise verdicts; unreadable verdicts are counted."""
    from tunesmith.eval.judge import JudgeItem, PairItem, check_readable, compare_pairwise, endpoint_judge, grade, summarize_grades
    from tunesmith.registry.runfolder import find_run, write_json

    if (judge_url is None) == (judge_local is None):
        raise UserError(
            "give exactly one judge: --judge-url URL --judge-model NAME, or --judge-local RUN_OR_MODEL",
            fix="e.g. --judge-url http://127.0.0.1:8000/v1 --judge-model gpt-4o-mini",
        )
    if judge_url and not judge_model:
        raise UserError("--judge-url needs --judge-model", fix="name the model the endpoint should use")
    run_dir = find_run(current_workspace(), run)
    if pairwise:
        other, tuned = _evaluated_together(
            run_dir,
            split,
            [pairwise, "tuned"],
            f"evaluate it first: `tunesmith eval {run} " + ("--compare-base`" if pairwise == "base" else f"--compare {pairwise}`"),
        )
        tuned = tuned[:limit]
    else:
        tuned, other = _evaluated_together(run_dir, split, ["tuned"], f"run `tunesmith eval {run} --split {split}` first")[0][:limit], []
    ask = endpoint_judge(judge_url, judge_model, api_key_env=api_key_env) if judge_url else _local_ask(judge_local, max_new_tokens)  # type: ignore[arg-type]
    judge_name = f"{judge_model} at {judge_url}" if judge_url else str(judge_local)
    if pairwise:
        by_id = {r["id"]: r for r in other}
        items = [
            PairItem(id=r["id"], prompt=r["prompt"], answer_a=by_id[r["id"]]["prediction"], answer_b=r["prediction"], reference=r["reference"])
            for r in tuned
            if r["id"] in by_id
        ]
        result = compare_pairwise(items, ask=ask)
        kind, summary = f"pairwise-{pairwise}", {"a": pairwise, "b": "tuned", **result.model_dump(exclude={"verdicts"})}
        details = [v.model_dump() for v in result.verdicts]
        out.print(
            f"tuned vs {pairwise} on {result.n} examples (judge {judge_name}): tuned wins {result.wins_b}, {pairwise} wins {result.wins_a}, "
            f"ties {result.ties}, unparseable {result.unparseable}; tuned win rate {result.win_rate_b}; "
            f"{result.order_disagreements} verdict(s) changed when the order was swapped"
        )
    else:
        criteria = _csv(rubric) or []
        grades = grade([JudgeItem(id=r["id"], prompt=r["prompt"], answer=r["prediction"], reference=r["reference"]) for r in tuned], criteria, ask=ask)
        graded = summarize_grades(grades, criteria)
        kind, summary, details = "rubric", {"criteria": criteria, **graded.model_dump()}, [g.model_dump() for g in grades]
        means = ", ".join(f"{k} {v if v is not None else '-'}" for k, v in graded.mean.items())
        out.print(f"rubric grades of the tuned answers on {graded.n} examples (judge {judge_name}): {means}; unparseable {graded.unparseable}")
    summary["judge"] = judge_name
    path = run_dir / "eval" / f"judge-{split}-{kind}.json"
    write_json(path, {"summary": summary, "items": details})
    # the replies are kept for a look; the report only takes a verdict the judge really gave
    check_readable(summary["n"], summary["unparseable"], judge_name, "rubric" if kind == "rubric" else "pairwise", str(path))
    _update_report(run_dir, ["judge", split, kind], summary)
    console.print(f"verdicts: {path}")


def _update_report(run_dir: Path, keys: list[str], value: Any) -> None:
    from tunesmith.eval.report import write_report
    from tunesmith.registry.runfolder import write_json

    path = run_dir / "eval" / "report.json"
    from tunesmith.files import read_json

    report = read_json(path, fix=f"delete it and evaluate again: tunesmith eval {run_dir}") if path.exists() else {}
    node = report
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
    write_json(path, report)
    write_report(run_dir)


@eval_app.command("review-export")
def eval_review_export(
    run: str = typer.Argument(..., help="run id or run folder, evaluated with `tunesmith eval RUN --compare-base`"),
    fraction: float = typer.Option(0.1, "--fraction", help="share of the evaluated examples to put in front of reviewers"),
    split: str = typer.Option("test", help="validation | test"),
    seed: int = typer.Option(0, help="which examples are drawn, and which answer is shown first"),
) -> None:
    """A blinded A/B review sheet of base vs tuned answers: review.csv and a self-contained review.html (keep review-key.json to yourself)."""
    from tunesmith.eval.review import export_review
    from tunesmith.registry.runfolder import find_run

    run_dir = find_run(current_workspace(), run)
    hint = f"run `tunesmith eval {run} --compare-base --split {split}` first"
    base_rows, tuned_rows = _evaluated_together(run_dir, split, ["base", "tuned"], hint)
    base = {r["id"]: r for r in base_rows}
    rows = [
        {"id": r["id"], "prompt": r["prompt"], "reference": r["reference"], "answer_a": base[r["id"]]["prediction"], "answer_b": r["prediction"]}
        for r in tuned_rows
        if r["id"] in base
    ]
    csv_path, html_path, key_path = export_review(rows, run_dir / "eval" / "review", fraction=fraction, seed=seed)
    out.print(f"review sheet for raters: {csv_path}\n  the same as a page with rating fields: {html_path}\n  key (who wrote which answer; keep it): {key_path}")
    if key_path.name != "review-key.json":
        out.print("  earlier exports and their keys are kept beside it; review-import finds the key that fits each sheet")
    out.print(f"when filled in: tunesmith eval review-import {run} FILLED.csv [MORE.csv ...]")


@eval_app.command("review-import")
def eval_review_import(
    run: str = typer.Argument(..., help="run id or run folder the sheet was exported from"),
    files: list[Path] = typer.Argument(..., help="filled review CSV(s), one per rater"),
    key: Path | None = typer.Option(None, "--key", help="the review-key*.json the sheets were exported with (default: found by the sheets' ids)"),
) -> None:
    """Unblind filled review sheets: tuned-vs-base win rate, mean ratings and, with several raters, their agreement."""
    from tunesmith.eval.review import find_key, import_review, review_keys
    from tunesmith.registry.runfolder import find_run

    run_dir = find_run(current_workspace(), run)
    if key is not None:
        keys = [key] * len(files)
    else:
        found = review_keys(run_dir / "eval" / "review")
        if not found:
            raise UserError(f"no review key in {run_dir / 'eval' / 'review'}", fix=f"export the sheet first: tunesmith eval review-export {run}")
        keys = [find_key(f, found) for f in files]
    result = import_review(files, keys)
    out.print(
        f"{result.rated} preference(s) from {result.raters} rater(s): tuned wins {result.tuned_wins}, base wins {result.base_wins}, "
        f"ties {result.ties}; tuned win rate {result.win_rate_tuned}; mean rating {result.mean_rating}"
    )
    if result.agreement is not None:
        out.print(f"rater agreement {result.agreement} (Cohen's kappa {result.cohen_kappa}) over {result.agreement_rows} shared row(s)")
    _update_report(run_dir, ["human_review"], {"files": [str(f) for f in files], "keys": sorted({k.name for k in keys}), **result.model_dump()})
