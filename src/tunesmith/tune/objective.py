"""What a study optimises: a metric on the validation split, its direction, the record of metrics.jsonl
that carries it during training (for the pruner), and its final value for a finished run. The test
split is never read here: it is scored once, for the best trial, when the search ends (search.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunesmith.config import EvalSpec, RunSpec
from tunesmith.errors import UserError

# The generation probe's metrics (train.generation_eval, eval's scoring): maximised.
GENERATION = ("exact_match", "valid_json", "label_macro_f1")
CLASSIFIER = ("accuracy", "f1_macro")


@dataclass(frozen=True)
class Metric:
    name: str
    direction: str  # "minimize" | "maximize"
    record_key: str | None  # the key of the metrics.jsonl records the pruner is fed with (None: no intermediate values)
    scored_by_eval: bool  # the final value comes from `tunesmith eval --split validation` on the kept artefact

    def better(self, a: float, b: float) -> bool:
        return a < b if self.direction == "minimize" else a > b

    def reaches(self, value: float, target: float) -> bool:
        return value <= target if self.direction == "minimize" else value >= target


def default_metric(spec: RunSpec) -> str:
    return "f1_macro" if spec.train.task == "classification" else "val_loss"


def resolve_metric(name: str | None, spec: RunSpec) -> Metric:
    """The metric named (or the task's default), refused with the names that fit when it does not fit the task."""
    name = name or default_metric(spec)
    task = spec.train.task
    if name == "val_loss":
        return Metric(name, "minimize", "val_loss", scored_by_eval=False)
    if task == "classification" and name in CLASSIFIER:
        return Metric(name, "maximize", f"val_{name}", scored_by_eval=False)
    if task == "causal_lm" and (name in GENERATION or name.startswith("field_accuracy.")):
        record = f"gen/{name}" if spec.train.generation_eval is not None else None
        return Metric(name, "maximize", record, scored_by_eval=True)
    fits = {"classification": ["val_loss", *CLASSIFIER], "causal_lm": ["val_loss", *GENERATION, "field_accuracy.<field>"]}.get(task, ["val_loss"])
    raise UserError(f"--metric {name} does not fit train.task {task}", fix=f"use one of: {', '.join(fits)}")


def final_value(metric: Metric, result: Any, workspace: Any) -> tuple[float | None, dict[str, float]]:
    """(the trial's value, every validation metric seen) for a finished run: the kept checkpoint's validation
    loss or classifier scores, or the kept artefact scored on the validation split by eval."""
    if not metric.scored_by_eval:
        found = result.best_metrics
        return found.get(metric.name), found
    scored = score_split(workspace, result.run_id, "validation")
    value = scored.get(metric.name)
    if value is None:
        raise UserError(
            f"the validation evaluation of {result.run_id} has no {metric.name}",
            fix=f"metrics it has: {', '.join(sorted(scored))}; choose one of them with --metric",
        )
    return value, scored


def score_split(workspace: Any, run_id: str, split: str) -> dict[str, float]:
    """The run's kept model scored on one split as `tunesmith eval RUN --split SPLIT` scores it (the run
    config's eval settings; kept under eval/ and registered, so which splits a study read is on record)."""
    from tunesmith.config import validate_spec
    from tunesmith.eval.evaluate import evaluate_run
    from tunesmith.eval.report import write_report
    from tunesmith.registry.runfolder import find_run, read_config

    run_dir = find_run(workspace, run_id)
    spec = validate_spec(EvalSpec, {**read_config(run_dir).eval.model_dump(), "split": split}, f"the eval section of {run_id}'s config")
    metrics = evaluate_run(workspace, run_dir, spec)["tuned"]
    write_report(run_dir)
    return metrics
