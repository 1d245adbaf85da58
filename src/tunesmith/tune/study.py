"""Studies in the workspace: Optuna's RDBStorage over <home>/tune.db (SQLite), each study's settings kept
in its user attributes so that `tune --resume STUDY` needs nothing but the name, and the one rule for a
trial whose process died: it is marked failed (user attribute `killed`) and its parameters are queued
again, once, as a new trial; a finished trial is never run again."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from pydantic import BaseModel, ConfigDict

from tunesmith.errors import UserError
from tunesmith.registry.runfolder import load_run_info, write_json
from tunesmith.workspace import Workspace, owner, process_alive, safe_name

optuna.logging.set_verbosity(logging.WARNING)  # the search prints its own lines; Optuna's per-trial logging repeats them

DB_NAME = "tune.db"
MAX_RETRIES = 1  # a trial killed twice is a trial that kills its process: leave it failed


class StudySettings(BaseModel):
    """What a study was started with (stored in the study; `--resume` reads it back)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    group: str | None = None  # --models: the search these per-model studies belong to
    spec: dict[str, Any]  # the run config every trial starts from (data prepared into a dataset)
    space: dict[str, Any]
    metric: str
    direction: str
    trials: int
    jobs: int = 1
    seed: int = 0
    pruner: str = "median"
    max_time: float | None = None
    max_cost: float | None = None
    price_per_hour: float | None = None
    keep_general: float | None = None
    target: float | None = None


def storage(workspace: Workspace) -> optuna.storages.RDBStorage:
    # A 60 s busy timeout: trial processes of --jobs K write the same SQLite file.
    url = f"sqlite:///{workspace.home / DB_NAME}"
    return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})


def study_folder(workspace: Workspace, name: str) -> Path:
    folder = workspace.home / "tune" / safe_name(name.replace(":", "--"), "study name")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def study_names(workspace: Workspace) -> list[str]:
    if not (workspace.home / DB_NAME).is_file():
        return []
    return optuna.study.get_all_study_names(storage(workspace))


def pruner_of(settings: StudySettings) -> optuna.pruners.BasePruner:
    """median: stop a trial whose validation is worse than the median of earlier trials at the same step,
    once a few trials have finished; halving: successive halving over the validation steps; none."""
    if settings.pruner == "none":
        return optuna.pruners.NopPruner()
    if settings.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource="auto", reduction_factor=3)
    return optuna.pruners.MedianPruner(n_startup_trials=startup_trials(settings.trials), n_warmup_steps=0)


def startup_trials(trials: int) -> int:
    """Trials before the pruner (and TPE's model) has enough history to judge: random draws first."""
    return min(10, max(2, trials // 4))


def sampler_of(settings: StudySettings, offset: int) -> optuna.samplers.BaseSampler:
    """TPE, seeded; `offset` (trials already in the study) keeps a resumed search from drawing its first
    points again. With --keep-general, trials over the drop are infeasible through TPE's constraints_func."""
    constraints = None
    if settings.keep_general is not None:
        limit = settings.keep_general

        def constraints(trial: optuna.trial.FrozenTrial) -> list[float]:
            return [trial.user_attrs.get("probe_drop", 0.0) - limit]  # <= 0 is feasible

    return optuna.samplers.TPESampler(seed=settings.seed + offset, n_startup_trials=max(3, settings.trials // 3), constraints_func=constraints)


def open_study(workspace: Workspace, settings: StudySettings, *, offset: int = 0) -> optuna.Study:
    return optuna.load_study(study_name=settings.name, storage=storage(workspace), sampler=sampler_of(settings, offset), pruner=pruner_of(settings))


def create(workspace: Workspace, settings: StudySettings) -> optuna.Study:
    safe_name(settings.name.replace(":", "--"), "study name")
    if settings.name in study_names(workspace):
        raise UserError(
            f"a study named {settings.name} already exists in {workspace.home / DB_NAME}",
            fix=f"continue it with `tunesmith tune --resume {settings.group or settings.name}`, or give another --name",
        )
    study = optuna.create_study(
        study_name=settings.name,
        storage=storage(workspace),
        direction=settings.direction,
        sampler=sampler_of(settings, 0),
        pruner=pruner_of(settings),
    )
    study.set_user_attr("settings", settings.model_dump(mode="json"))
    study.set_user_attr("seconds_used", 0.0)
    return study


def load_settings(workspace: Workspace, name: str) -> StudySettings:
    if name not in study_names(workspace):
        known = study_names(workspace)
        raise UserError(
            f"no study named {name} in {workspace.home / DB_NAME}",
            fix=f"studies here: {', '.join(known)}" if known else "start one with `tunesmith tune --config run.yaml --trials N`",
        )
    study = optuna.load_study(study_name=name, storage=storage(workspace))
    return StudySettings.model_validate(study.user_attrs["settings"])


def members(workspace: Workspace, name: str) -> list[str]:
    """The studies a name stands for: itself, or the per-model studies of a --models search called `name`."""
    names = study_names(workspace)
    if name in names:
        return [name]
    grouped = [n for n in names if n.startswith(f"{name}:")]
    if grouped:
        return grouped
    raise UserError(
        f"no study named {name} in {workspace.home / DB_NAME}",
        fix=f"studies here: {', '.join(names)}" if names else "start one with `tunesmith tune --config run.yaml --trials N`",
    )


def claim(trial: optuna.Trial) -> None:
    """The process running a trial says so: `--resume` tells a dead trial from a running one by it."""
    trial.set_user_attr("owner", owner())


def counted(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a trial used up one of the study's N: finished, pruned or failed on its own (not killed)."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and not trial.user_attrs.get("killed")


def recover(workspace: Workspace, study: optuna.Study) -> list[int]:
    """Trials left RUNNING by a process that is gone: failed, their runs marked, their parameters queued again
    (once). Returns their numbers. A trial whose process still runs (another `tune`) is left alone."""
    recovered = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        who = trial.user_attrs.get("owner") or {}
        if process_alive(who.get("host"), who.get("pid"), who.get("started")) is not False:
            continue
        study._storage.set_trial_user_attr(trial._trial_id, "killed", "its process ended before the trial did (killed or crashed)")
        study.tell(trial.number, state=TrialState.FAIL)
        _mark_run(workspace, trial.user_attrs.get("run_id"), study.study_name, trial.number)
        retries = trial.user_attrs.get("retries", 0)
        if retries < MAX_RETRIES:
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number, "retries": retries + 1}, skip_if_exists=False)
        recovered.append(trial.number)
    return recovered


def _mark_run(workspace: Workspace, run_id: str | None, study_name: str, number: int) -> None:
    """A killed trial's run says which study it belonged to (the training process had no chance to)."""
    if not run_id:
        return
    folder = workspace.run_dir(run_id)
    if (folder / "run.json").is_file():
        info = load_run_info(folder)
        info.study = {"name": study_name, "trial": number}
        write_json(folder / "run.json", info.model_dump(mode="json"))  # not save_run_info: it would make this process the run's owner


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The best completed trial that meets the study's constraint (--keep-general), if any."""
    settings = StudySettings.model_validate(study.user_attrs["settings"])
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    if settings.keep_general is not None:
        done = [t for t in done if t.user_attrs.get("probe_drop", 0.0) <= settings.keep_general]
    if not done:
        return None
    pick = min if settings.direction == "minimize" else max
    return pick(done, key=lambda t: (t.value, -t.number) if settings.direction == "maximize" else (t.value, t.number))
