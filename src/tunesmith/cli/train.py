"""`tunesmith train`: flags → a checked run spec → train here, launch processes, resume or only
estimate → report. The work is in train/ (recipe.train, resume.resume, dry_run.dry_run); this
module only turns flags into a spec and prints the outcome."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from tunesmith.cli.common import current_workspace
from tunesmith.errors import ProblemList, UserError
from tunesmith.ui import console


def train_cmd(
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML run config (see examples/)"),
    model: str | None = typer.Option(None, help="base model: 'smollm2-135m-instruct', a local HF folder or a hub id"),
    from_run: str | None = typer.Option(
        None, "--from", help="continue tuning this run (id, name or folder): start from its adapter or weights, on its base, with its chat template"
    ),
    data: str | None = typer.Option(None, help="a prepared dataset's name, or a file to prepare"),
    method: str | None = typer.Option(None, help="lora | qlora | dora | full | prompt_tuning | prefix_tuning (docs/training.md: when to use each)"),
    task: str | None = typer.Option(
        None, help="causal_lm (write answers) | classification (a head predicts the label; default model all-minilm-l6-v2) | preference (DPO on answer pairs)"
    ),
    epochs: str | None = typer.Option(None, help="passes over the training split, or auto (chosen from the number of examples)"),
    max_steps: int | None = typer.Option(None, "--max-steps", help="stop after this many optimiser steps (overrides --epochs)"),
    lr: str | None = typer.Option(None, help="peak learning rate (default: the method's), or auto (scaled with the batch)"),
    lr_multiplier: float | None = typer.Option(None, "--lr-multiplier", help="peak lr as a multiple of the method's default"),
    batch_size: str | None = typer.Option(None, "--batch-size", help="examples per micro-batch, or auto (from the device)"),
    grad_accum: str | None = typer.Option(None, "--grad-accum", help="micro-batches per optimiser step, or auto (from the number of examples)"),
    name: str | None = typer.Option(None, help="a label for the run"),
    keep_general: float | None = typer.Option(
        None,
        "--keep-general",
        min=0.0,
        max=0.9,
        help="share of each epoch that is the base model's own answers to general prompts, against forgetting (default 0.2, measured on the quickstart: probe drop 0.33 -> 0.00 at exact match 0.90; 0 turns it off; docs/forgetting.md)",
    ),
    skip_invalid: bool = typer.Option(
        False, "--skip-invalid", help="with --data FILE: leave out lines that cannot be read as examples (listed in the dataset's manifest)"
    ),
    resume: str | None = typer.Option(None, "--resume", help="continue this run (id or folder) from its latest checkpoint, with its own config"),
    max_time: float | None = typer.Option(None, "--max-time", help="seconds of training (whole run); stops cleanly with a checkpoint, resumable"),
    max_cost: float | None = typer.Option(None, "--max-cost", help="money to spend at --price-per-hour; stops cleanly with a checkpoint, resumable"),
    price_per_hour: float | None = typer.Option(None, "--price-per-hour", help="what an hour of this machine costs; the estimate shows the run's cost"),
    report_to: str | None = typer.Option(None, "--report-to", help="comma-separated trackers: tensorboard, mlflow, wandb (offline)"),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="print the estimate (tokens, steps, time, memory, cost) and exit; creates no run (one process, whatever --nproc)"
    ),
    nproc: int = typer.Option(
        1,
        "--nproc",
        min=1,
        help="data-parallel processes on this machine (gloo on CPU, nccl on GPU); same result as 1 (dropout aside: each process draws its own masks)",
    ),
    accelerate_config: Path | None = typer.Option(
        None,
        "--accelerate-config",
        help="an accelerate YAML (from `accelerate config`): run under `accelerate launch`; FSDP (fsdp_version 2) shards the model, DEEPSPEED runs ZeRO stage 1 or 2",
    ),
) -> None:
    """Fine-tune a base model; writes a run folder and registers the run. --resume continues an interrupted one."""
    flags = TrainFlags(**locals())  # one typed object through the steps below
    budget = flags.budget()  # first: a budget that is not a finite number is refused by its flag's name
    problems: list[str] = []  # flags' problems, reported together with the config's own, all at once
    overrides = flags.overrides(problems)
    launcher = _launcher(flags)
    if flags.resume is not None:
        if problems:
            raise ProblemList("invalid command-line flags", problems, fix="correct the flags named above")
        result = _resume(flags, overrides, launcher, budget)
    else:
        result = _train(flags, overrides, problems, launcher, budget)
    if result is not None and _report_here():
        _report(result)


@dataclass
class TrainFlags:
    config: Path | None
    model: str | None
    from_run: str | None
    data: str | None
    method: str | None
    task: str | None
    epochs: str | None
    max_steps: int | None
    lr: str | None
    lr_multiplier: float | None
    batch_size: str | None
    grad_accum: str | None
    name: str | None
    keep_general: float | None
    skip_invalid: bool
    resume: str | None
    max_time: float | None
    max_cost: float | None
    price_per_hour: float | None
    report_to: str | None
    dry_run: bool
    nproc: int
    accelerate_config: Path | None

    def overrides(self, problems: list[str]) -> dict[str, Any]:
        """The flags as dotted config paths (None: not given); a flag that cannot be read goes to `problems`."""
        overrides: dict[str, Any] = {
            "model.name": self.model,
            "model.from_run": self.from_run,
            "train.task": self.task,
            "train.method": self.method,
            "train.epochs": _number_or_auto("--epochs", self.epochs, int, problems),
            "train.max_steps": self.max_steps,
            "train.lr": _number_or_auto("--lr", self.lr, float, problems),
            "train.lr_multiplier": self.lr_multiplier,
            "train.batch_size": _number_or_auto("--batch-size", self.batch_size, int, problems),
            "train.grad_accum": _number_or_auto("--grad-accum", self.grad_accum, int, problems),
            "name": self.name,
            "train.price_per_hour": self.price_per_hour,
            "train.report_to": [t.strip() for t in self.report_to.split(",") if t.strip()] if self.report_to else None,
        }
        if self.data is not None:
            overrides["data"] = _data_source(self.data, problems)
        overrides["data.prepare.skip_invalid"] = True if self.skip_invalid else None
        if self.keep_general is not None:
            overrides.update({"data.keep_general": False} if self.keep_general == 0 else {"data.keep_general.fraction": self.keep_general})
        return overrides

    def budget(self) -> Any:
        from tunesmith.train.run.guards import Budget

        return Budget(self.max_time, self.max_cost, self.price_per_hour)


def _launcher(flags: TrainFlags) -> Any:
    """The accelerate config to launch under, if any; refused inside processes a launcher already started."""
    if flags.nproc > 1 or flags.accelerate_config is not None:
        from tunesmith.train.parallel.distributed import launched

        if launched():  # e.g. `accelerate launch ... -m tunesmith train --nproc 2` would start processes inside processes
            raise UserError(
                "this process was already started by a launcher as one of several",
                where="--nproc / --accelerate-config",
                fix="drop --nproc and --accelerate-config here: the launcher decides the processes",
            )
    if flags.accelerate_config is None:
        return None
    from tunesmith.train.parallel.accel import read_accelerate_config

    return read_accelerate_config(flags.accelerate_config)


def _train(flags: TrainFlags, overrides: dict[str, Any], problems: list[str], launcher: Any, budget: Any) -> Any:
    """A new run: here, in processes, or only its estimate (None: nothing to report here)."""
    from tunesmith.config import load_run_spec
    from tunesmith.train.run.tracking import check_installed

    spec = load_run_spec(flags.config, overrides, problems)
    check_installed(spec.train.report_to)
    if launcher is not None:
        from tunesmith.train.parallel.accel import check_spec

        check_spec(launcher, spec)
    if flags.dry_run:
        from tunesmith.train.dry_run import dry_run

        dry_run(spec, current_workspace())
        return None
    if flags.nproc > 1 or launcher is not None:
        from tunesmith.train.parallel.accel import launch_spec
        from tunesmith.train.parallel.distributed import budget_args
        from tunesmith.train.recipe import prepared_for_launch

        raise typer.Exit(launch_spec(prepared_for_launch(spec, current_workspace()), flags.nproc, budget_args(budget), launcher))
    from tunesmith.train.recipe import train

    return train(spec, current_workspace(), budget)


def _resume(flags: TrainFlags, overrides: dict[str, Any], launcher: Any, budget: Any) -> Any:
    """An interrupted run continued with its own config: here, or in processes."""
    from tunesmith.train.parallel.distributed import budget_args
    from tunesmith.train.resume import resumable_run, resume

    overrides.pop("train.price_per_hour")  # a price is not part of the run; it only feeds the budget
    run_dir = resumable_run(current_workspace(), flags.resume, flags.config, overrides)
    if launcher is not None:
        from tunesmith.registry.runfolder import read_config
        from tunesmith.train.parallel.accel import check_spec
        from tunesmith.train.parallel.accel import launch as accelerate_launch

        check_spec(launcher, read_config(run_dir))
        raise typer.Exit(accelerate_launch(launcher, ["--resume", str(run_dir), *budget_args(budget)], flags.nproc))
    if flags.nproc > 1:
        from tunesmith.train.parallel.distributed import launch

        raise typer.Exit(launch(["--resume", str(run_dir), *budget_args(budget)], flags.nproc))
    return resume(current_workspace(), run_dir, budget)


def _report(result: Any) -> None:
    """How the run ended, on stderr; stdout carries only the run id, for scripts."""
    info = result.info
    if info.status == "stopped":
        console.print(f"[yellow]run {info.run_id} stopped[/]: {info.stop_reason}; continue with `tunesmith train --resume {info.run_id}`")
    else:
        scores = "".join(f", {name} {value}" for name, value in (info.best_metrics or {}).items())  # a classifier's accuracy and macro-F1
        console.print(
            f"[green]run {info.run_id} completed[/]: best at step {info.best_step} (epoch {info.best_epoch}), validation loss {info.best_val_loss}{scores}"
        )
        if info.stop_reason:
            console.print(info.stop_reason)
    console.print(f"run folder: {result.run_dir}")
    typer.echo(info.run_id)


def _data_source(value: str, problems: list[str]) -> dict[str, str | None]:
    """--data: an existing file, or a value that looks like one (a folder in it, a data file's suffix),
    is a file to prepare; anything else names a prepared dataset. A missing file is added to `problems`
    (and still given as the source, so the config is not also told it has no data). The other source is
    None: it replaces the config's source and leaves the rest of its data section (keep_general, replay,
    prepare) as the config set it."""
    from tunesmith.data.formats import PARQUET_SUFFIXES

    path = Path(value).expanduser()
    if path.is_file():
        return {"path": str(path), "dataset": None}
    if path.suffix.lower() in (".jsonl", ".json", ".csv", *PARQUET_SUFFIXES) or "/" in value or "\\" in value:
        problems.append(f"--data: no such file: {value}; check the path, or give the name of a dataset made by `tunesmith data prepare`")
        return {"path": str(path), "dataset": None}
    return {"dataset": value, "path": None}


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
