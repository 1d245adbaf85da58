"""`tunesmith tune`: a study over a run config → trials (in this process, or K processes at once) until N
have finished or the study's budget is spent → the best trial scored once on the test split → the
report. `--models a,b` runs the same search per base model (one study each, named STUDY:<model>) and
names the smallest model whose best validation value reaches `--target`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from tunesmith.config import RunSpec
from tunesmith.errors import UserError
from tunesmith.train.recipe import prepared_for_launch
from tunesmith.tune.objective import resolve_metric
from tunesmith.tune.report import StudyReport, study_report
from tunesmith.tune.space import build_space
from tunesmith.tune.study import StudySettings, best_trial, counted, create, load_settings, members, open_study, recover, study_folder
from tunesmith.tune.trial import base_probe, run_trial
from tunesmith.ui import console
from tunesmith.workspace import Workspace, safe_name

POLL_SECONDS = 0.5


@dataclass
class SearchResult:
    """What `tunesmith.tune` found: one report per study (one per base model with --models), and with
    --target the verdict: the smallest model whose best validation value reaches it."""

    name: str
    studies: list[StudyReport]
    verdict: str | None = None
    smallest: str | None = None  # the model the verdict names (None: none reached the target)

    @property
    def best(self) -> StudyReport:
        return self.studies[0]


@dataclass
class Limits:
    """The study's budget as seconds of wall-clock (money converted at price_per_hour), counted over every session."""

    seconds: float | None
    used_before: float
    started: float = field(default_factory=time.monotonic)

    @classmethod
    def of(cls, settings: StudySettings, used_before: float) -> Limits:
        found = [s for s in (settings.max_time, _cost_seconds(settings)) if s is not None]
        return cls(min(found) if found else None, used_before)

    def used(self) -> float:
        return self.used_before + time.monotonic() - self.started

    def remaining(self) -> float | None:
        return None if self.seconds is None else self.seconds - self.used()


def _cost_seconds(settings: StudySettings) -> float | None:
    if settings.max_cost is None:
        return None
    if not settings.price_per_hour:
        raise UserError("--max-cost needs a price per hour to turn time into money", fix="add --price-per-hour (or train.price_per_hour in the config)")
    return settings.max_cost / settings.price_per_hour * 3600


# ---------------------------------------------------------------- starting and resuming


def new_search(
    config: RunSpec | dict[str, Any] | str | Path,
    workspace: Workspace,
    *,
    trials: int,
    jobs: int = 1,
    name: str | None = None,
    metric: str | None = None,
    space: str | Path | None = None,
    models: list[str] | None = None,
    target: float | None = None,
    keep_general: float | None = None,
    max_time: float | None = None,
    max_cost: float | None = None,
    price_per_hour: float | None = None,
    pruner: str = "median",
    seed: int = 0,
) -> SearchResult:
    _check_numbers(trials=trials, jobs=jobs, max_time=max_time, max_cost=max_cost, price_per_hour=price_per_hour, keep_general=keep_general)
    if pruner not in ("median", "halving", "none"):
        raise UserError(f"--pruner {pruner} is not one of median, halving, none")
    if target is not None and not models:
        raise UserError("--target names the smallest model that reaches it, and needs --models a,b,...", fix="add --models, or drop --target")
    base = _run_spec(config)
    price = price_per_hour if price_per_hour is not None else base.train.price_per_hour
    if max_cost is not None and not price:
        raise UserError("--max-cost needs a price per hour to turn time into money", fix="add --price-per-hour (or train.price_per_hour in the config)")
    name = name or f"{base.name or 'study'}-{time.strftime('%Y%m%d-%H%M%S')}"
    safe_name(name, "study name")
    chosen = models or [base.model.name]
    settings = []
    for model in chosen:
        spec = base.model_copy(update={"model": base.model.model_copy(update={"name": model})}) if models else base
        checked_space = build_space(spec, Path(space) if space is not None else None, keeps_general=keep_general is not None)
        found = resolve_metric(metric, spec)
        spec = prepared_for_launch(spec, workspace)  # the data is prepared once, here, not by every trial
        settings.append(
            StudySettings(
                name=f"{name}:{_slug(model)}" if models else name,
                group=name if models else None,
                spec=spec.model_dump(mode="json"),
                space=checked_space.as_dict(),
                metric=found.name,
                direction=found.direction,
                trials=trials,
                jobs=jobs,
                seed=seed,
                pruner=pruner,
                max_time=max_time,
                max_cost=max_cost,
                price_per_hour=price,
                keep_general=keep_general,
                target=target,
            )
        )
    for one in settings:
        create(workspace, one)
    console.print(f"study {name}: {trials} trials{' per model' if models else ''}, optimising validation {settings[0].metric} ({settings[0].direction})")
    return _run_all(workspace, name, settings)


def resume_search(name: str, workspace: Workspace, *, jobs: int | None = None) -> SearchResult:
    """Continue a study (or a --models search) where it stopped: finished trials stay finished."""
    settings = [load_settings(workspace, n) for n in members(workspace, name)]
    if jobs is not None:
        _check_numbers(jobs=jobs)
        settings = [s.model_copy(update={"jobs": jobs}) for s in settings]
    return _run_all(workspace, settings[0].group or name, settings)


def _run_spec(config: RunSpec | dict[str, Any] | str | Path) -> RunSpec:
    """As tunesmith.train reads its spec: a RunSpec, a mapping or a YAML file's path, checked the same way."""
    from tunesmith.config import load_run_spec, run_spec_from
    from tunesmith.train.run.tracking import check_installed

    if isinstance(config, (str, Path)):
        spec = load_run_spec(Path(config))
    else:
        spec = run_spec_from(config if isinstance(config, RunSpec) else dict(config), "the run config given to tunesmith.tune")
    check_installed(spec.train.report_to)
    return spec


def _run_all(workspace: Workspace, name: str, settings: list[StudySettings]) -> SearchResult:
    reports = [run_study(workspace, one) for one in settings]
    if settings[0].group is None:
        return SearchResult(name, reports)
    return verdict(workspace, name, settings, reports)


def _check_numbers(**values: float | None) -> None:
    for flag, value in values.items():
        if value is None:
            continue
        whole = flag in ("trials", "jobs")
        if (whole and (not float(value).is_integer() or value < 1)) or (not whole and not (value >= 0 if flag == "keep_general" else value > 0)):
            kind = "a whole number from 1" if whole else "a number at or above 0" if flag == "keep_general" else "a number above 0"
            raise UserError(f"--{flag.replace('_', '-')} must be {kind} (got {value})")


def _slug(model: str) -> str:
    tail = Path(model.rstrip("/")).name or model
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in tail)[:60]


# ---------------------------------------------------------------- one study


def run_study(workspace: Workspace, settings: StudySettings) -> StudyReport:
    already = len(open_study(workspace, settings).trials)
    study = open_study(workspace, settings, offset=already)
    for number in recover(workspace, study):
        console.print(f"[yellow]trial {number} of {settings.name} was cut short (its process ended); its parameters are queued again")
    if settings.keep_general is not None:
        base_probe(workspace, settings)
    limits = Limits.of(settings, float(study.user_attrs.get("seconds_used", 0.0)))
    try:
        if settings.jobs == 1:
            _in_process(workspace, settings, study, limits)
        else:
            _in_processes(workspace, settings, study, limits)
    finally:
        study.set_user_attr("seconds_used", round(limits.used(), 1))
    score_best_on_test(workspace, study)
    return study_report(workspace, settings.name)


def _to_start(settings: StudySettings, study: optuna.Study, running: int, limits: Limits) -> bool:
    remaining = limits.remaining()
    if remaining is not None and remaining <= 0:
        return False
    done = sum(counted(t) for t in study.get_trials(deepcopy=False))
    return done + running < settings.trials


def _ask(settings: StudySettings, study: optuna.Study) -> optuna.Trial:
    from tunesmith.tune.space import Param, Space

    base = RunSpec.model_validate(settings.spec)
    distributions = Space({k: Param.model_validate(v) for k, v in settings.space.items()}, base).distributions
    return study.ask(distributions)


def _in_process(workspace: Workspace, settings: StudySettings, study: optuna.Study, limits: Limits) -> None:
    while _to_start(settings, study, 0, limits):
        trial = _ask(settings, study)
        run_trial(workspace, settings, trial, max_seconds=limits.remaining())
        study.set_user_attr("seconds_used", round(limits.used(), 1))
    _say_budget(limits)


def _in_processes(workspace: Workspace, settings: StudySettings, study: optuna.Study, limits: Limits) -> None:
    """Up to `jobs` trials at once, each in a process of its own (python -m tunesmith.tune.worker), its
    output in the study's folder. The sampler runs here: each trial's parameters are drawn before it starts."""
    from tunesmith.tune.study import claim

    logs = study_folder(workspace, settings.name) / "logs"
    logs.mkdir(exist_ok=True)
    running: dict[int, tuple[subprocess.Popen, Any]] = {}
    try:
        while True:
            while len(running) < settings.jobs and _to_start(settings, study, len(running), limits):
                trial = _ask(settings, study)
                claim(trial)  # this process, until the worker claims it: a kill in between leaves a trial --resume recovers
                running[trial.number] = _spawn(workspace, settings, trial.number, limits.remaining(), logs)
                console.print(f"trial {trial.number} started (pid {running[trial.number][0].pid}, log {logs / f'trial-{trial.number}.log'})")
            if not running:
                break
            time.sleep(POLL_SECONDS)
            for number, (process, log) in list(running.items()):
                if process.poll() is None:
                    continue
                log.close()
                del running[number]
                _after_worker(study, number, process.returncode, logs)
            study.set_user_attr("seconds_used", round(limits.used(), 1))
    finally:
        for process, log in running.values():  # Ctrl-C: the workers stop at their next step (they watch their parent)
            process.wait()
            log.close()
    _say_budget(limits)


def _spawn(workspace: Workspace, settings: StudySettings, number: int, remaining: float | None, logs: Path) -> tuple[subprocess.Popen, Any]:
    command = [sys.executable, "-m", "tunesmith.tune.worker", settings.name, str(number), "--parent", str(os.getpid())]
    if remaining is not None:
        command += ["--max-seconds", f"{remaining:.1f}"]
    log = (logs / f"trial-{number}.log").open("w", encoding="utf-8")
    env = {**os.environ, "TUNESMITH_HOME": str(workspace.home)}
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env), log


def _after_worker(study: optuna.Study, number: int, code: int, logs: Path) -> None:
    trial = study.get_trials(deepcopy=False)[number]
    if trial.state == TrialState.RUNNING:  # the worker died without telling the study
        tail = (logs / f"trial-{number}.log").read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
        study._storage.set_trial_user_attr(trial._trial_id, "error", f"its process exited with code {code}: {' | '.join(tail)}")
        study.tell(number, state=TrialState.FAIL)
    value = f"{trial.value:.4g}" if trial.state == TrialState.COMPLETE and trial.value is not None else trial.state.name.lower()
    console.print(f"trial {number} ended: {value}")


def _say_budget(limits: Limits) -> None:
    remaining = limits.remaining()
    if remaining is not None and remaining <= 0:
        console.print(f"[yellow]the study's budget is spent ({limits.used():.0f} s of {limits.seconds:.0f} s); no more trials are started")


# ---------------------------------------------------------------- the best trial, once on the test split


def score_best_on_test(workspace: Workspace, study: optuna.Study) -> None:
    """The test split, read for the first time: the best trial's run scored on it once (again only if a later
    session found a better trial), kept in the study as `test`."""
    from tunesmith.tune.objective import score_split

    best = best_trial(study)
    if best is None:
        return
    kept = study.user_attrs.get("test") or {}
    if kept.get("trial") == best.number:
        return
    run_id = best.user_attrs["run_id"]
    console.print(f"best trial {best.number} (run {run_id}): scoring it on the test split, the only run of the study that reads it")
    metrics = score_split(workspace, run_id, "test")
    study.set_user_attr("test", {"trial": best.number, "run_id": run_id, "metrics": metrics})


# ---------------------------------------------------------------- several base models


def parameter_count(spec: RunSpec) -> int:
    """The base model's parameters, counted on the meta device (no weights are read)."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    from tunesmith.models.loading import resolve_model_path

    config = AutoConfig.from_pretrained(resolve_model_path(spec.model.name))
    loader = AutoModelForCausalLM if spec.train.task != "classification" else AutoModel
    with torch.device("meta"):
        model = loader.from_config(config)
    return sum(p.numel() for p in model.parameters())


def verdict(workspace: Workspace, name: str, settings: list[StudySettings], reports: list[StudyReport]) -> SearchResult:
    metric = resolve_metric(settings[0].metric, RunSpec.model_validate(settings[0].spec))
    sized = sorted(zip((parameter_count(RunSpec.model_validate(s.spec)) for s in settings), settings, reports), key=lambda x: x[0])
    for count, one, report in sized:
        report.parameters = count
    target = settings[0].target
    result = SearchResult(name, [r for _, _, r in sized])
    if target is None:
        return result
    for count, one, report in sized:
        if report.best_value is not None and metric.reaches(report.best_value, target):
            result.smallest = RunSpec.model_validate(one.spec).model.name
            result.verdict = (
                f"the smallest model that reaches validation {metric.name} {target:g} is {result.smallest} "
                f"({count / 1e6:.1f}M parameters; best {report.best_value:.4g}, trial {report.best_trial}, run {report.best_run})"
            )
            break
    else:
        best = [f"{RunSpec.model_validate(o.spec).model.name} {r.best_value:.4g}" for _, o, r in sized if r.best_value is not None]
        result.verdict = f"no model reached validation {metric.name} {target:g} (best: {', '.join(best) or 'no completed trial'})"
    console.print(result.verdict)
    return result


def show_search(workspace: Workspace, name: str) -> SearchResult:
    """`tune show`: a study, or every study of a --models search with its verdict; report.html rewritten."""
    names = members(workspace, name)
    reports = [study_report(workspace, n) for n in names]
    settings = [load_settings(workspace, n) for n in names]
    if settings[0].group is None:
        return SearchResult(name, reports)
    return verdict(workspace, name, settings, reports)
