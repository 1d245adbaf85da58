"""One trial: the study's run config with the trial's parameters → a registered training run, whose
validations are reported to Optuna as the loop writes them (the pruner may stop it) → its value on the
validation split (and, with --keep-general, the general-skills probe's drop) told to the study.
The same function runs inside the `tune` process (--jobs 1) and in a process of its own (--jobs K)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from tunesmith.config import RunSpec, run_spec_from
from tunesmith.errors import UserError
from tunesmith.registry.runfolder import load_run_info, save_run_info
from tunesmith.registry.store import Registry
from tunesmith.train.run.guards import Budget, Control
from tunesmith.tune.objective import Metric, final_value, resolve_metric
from tunesmith.tune.space import build_space
from tunesmith.tune.study import StudySettings, claim, study_folder
from tunesmith.ui import console
from tunesmith.workspace import Workspace

PRUNED = "pruned"  # a run's status (run.json and the registry) when its study's pruner stopped it


class TrialControl(Control):
    """Feeds each validation the loop writes to metrics.jsonl to the trial, and stops the run when the
    pruner says so, or when the `tune` process that started this one is gone (the trial is then
    retried by `tune --resume`, not left training for nobody)."""

    def __init__(self, trial: optuna.Trial, metric: Metric, parent_pid: int | None = None):
        self.trial, self.metric, self.parent_pid = trial, metric, parent_pid
        self.metrics_file: Path | None = None
        self.offset, self.reported = 0, set()
        self.pruned_at: int | None = None
        self.orphaned = False

    def on_start(self, run_id: str, run_dir: Path) -> None:
        self.metrics_file = run_dir / "metrics.jsonl"
        self.trial.set_user_attr("run_id", run_id)

    def stop_requested(self) -> str | None:
        for record in self._new_records():
            value, step = record.get(self.metric.record_key or ""), record.get("step")
            if value is None or step is None or step in self.reported:
                continue
            self.reported.add(step)
            self.trial.report(float(value), step)
            if self.trial.should_prune():
                self.pruned_at = step
                return f"pruned: {self.metric.record_key} {value} at step {step} is worse than the study's earlier trials there"
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            self.orphaned = True
            return "the tune process that started this trial has ended"
        return None

    def _new_records(self) -> list[dict[str, Any]]:
        """Whole lines appended since the last call (the loop flushes each record)."""
        if self.metrics_file is None or not self.metrics_file.is_file():
            return []
        with self.metrics_file.open("rb") as handle:
            handle.seek(self.offset)
            chunk = handle.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        return [json.loads(line) for line in complete.decode("utf-8").splitlines() if line.strip()]


def trial_spec(settings: StudySettings, params: dict[str, Any], number: int) -> RunSpec:
    base = run_spec_from(dict(settings.spec), f"the run config of study {settings.name}")
    spec = build_space(base, stored=settings.space).apply(base, params, f"trial {number} of study {settings.name}")
    return spec.model_copy(update={"name": f"{settings.name.replace(':', '-')}-t{number}"})


def run_trial(workspace: Workspace, settings: StudySettings, trial: optuna.Trial, *, max_seconds: float | None = None, parent_pid: int | None = None) -> str:
    """Train, score and tell one trial; returns its state's name (COMPLETE, PRUNED, FAIL, or RUNNING when
    its parent went away and it was left for --resume)."""
    from tunesmith.train.recipe import train

    claim(trial)
    spec = trial_spec(settings, trial.params, trial.number)
    metric = resolve_metric(settings.metric, spec)
    control = TrialControl(trial, metric, parent_pid)
    console.rule(f"study {settings.name}: trial {trial.number}  " + "  ".join(f"{k}={_short(v)}" for k, v in trial.params.items()))
    try:
        # what is left of the study's budget, never 0: the driver checked it was above 0 a moment ago
        result = train(spec, workspace, Budget(max_seconds=None if max_seconds is None else max(max_seconds, 0.1), control=control))
    except UserError as exc:  # diverged, or input a trial's values made bad: the study goes on without it
        _stamp(workspace, trial.user_attrs.get("run_id"), settings.name, trial.number)
        return _fail(trial, str(exc).splitlines()[0])
    _stamp(workspace, result.run_id, settings.name, trial.number, pruned=control.pruned_at is not None)
    trial.set_user_attr("train_seconds", result.info.train_seconds)
    if control.pruned_at is not None:
        trial.set_user_attr("stopped_at_step", control.pruned_at)
        trial.study.tell(trial, state=TrialState.PRUNED)
        console.print(f"trial {trial.number} pruned at step {control.pruned_at} (run {result.run_id})")
        return "PRUNED"
    if control.orphaned:
        return "RUNNING"
    if result.status != "completed":
        return _fail(trial, f"stopped before its last step: {result.info.stop_reason}")
    try:
        value, seen = final_value(metric, result, workspace)
    except UserError as exc:  # e.g. no validation example with a reference answer to score
        return _fail(trial, str(exc).splitlines()[0])
    trial.set_user_attr("validation", seen)
    if settings.keep_general is not None:
        _probe_general(workspace, settings, trial, result.run_id)
    if value is None:
        return _fail(trial, f"its run has no validation {metric.name} (is there a validation split?)")
    trial.study.tell(trial, value)
    console.print(f"trial {trial.number}: {metric.name} {value:.4g} (run {result.run_id})")
    return "COMPLETE"


def _fail(trial: optuna.Trial, why: str) -> str:
    trial.set_user_attr("error", why)
    trial.study.tell(trial, state=TrialState.FAIL)
    console.print(f"[yellow]trial {trial.number} failed: {why}")
    return "FAIL"


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _stamp(workspace: Workspace, run_id: str | None, study: str, number: int, *, pruned: bool = False) -> None:
    """run.json (and the registry, for a pruned run) say which study and trial the run was, so `runs list`
    and the dashboard show a pruned run as pruned rather than as stopped by a budget."""
    folder = workspace.run_dir(run_id) if run_id else None
    if folder is None or not (folder / "run.json").is_file():
        return  # no run was made (its input was refused before training began)
    info = load_run_info(folder)
    info.study = {"name": study, "trial": number}
    if pruned:
        info.status = PRUNED
        info.stop_reason = f"pruned by study {study} (trial {number}): {info.stop_reason}"
    save_run_info(folder, info)
    if pruned:
        Registry(workspace.registry_db).finish_run(run_id, PRUNED, info.best_val_loss)


# ---------------------------------------------------------------- keeping general skills (--keep-general)

BASE_PROBE = "base_probe.json"


def base_probe(workspace: Workspace, settings: StudySettings) -> dict[str, Any]:
    """The general-skills probe on the study's base model, scored once and kept in the study's folder."""
    path = study_folder(workspace, settings.name) / BASE_PROBE
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    from tunesmith.eval.forgetting import run_probe
    from tunesmith.models.loading import load_model

    spec = run_spec_from(dict(settings.spec), f"the run config of study {settings.name}")
    console.print(f"general-skills probe on the base model {spec.model.name} (once per study)")
    model, tokenizer, _ = load_model(spec.model)
    result = run_probe(model, tokenizer)
    path.write_text(json.dumps(result), encoding="utf-8")
    return result


def _probe_general(workspace: Workspace, settings: StudySettings, trial: optuna.Trial, run_id: str) -> None:
    """The trial's probe drop against the base, as a user attribute the sampler's constraint reads."""
    from tunesmith.eval.forgetting import probe_drop, run_probe
    from tunesmith.models.artefact import load_run_model
    from tunesmith.registry.runfolder import read_config

    folder = workspace.run_dir(run_id)
    model, tokenizer = load_run_model(folder, load_run_info(folder), read_config(folder).model)
    found = probe_drop(base_probe(workspace, settings), run_probe(model, tokenizer))
    trial.set_user_attr("probe_drop", found["drop"])
    trial.set_user_attr("probe_interval", [found["low"], found["high"]])
    feasible = found["drop"] <= (settings.keep_general or 0.0)
    console.print(
        f"trial {trial.number}: general-skills probe drop {found['drop']:+.3f} ({'within' if feasible else 'over'} --keep-general {settings.keep_general})"
    )
