"""`tunesmith train --resume RUN`: continue a run from its latest complete checkpoint with the
run's own config.yaml, so the result equals the run that was never interrupted."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from tunesmith.config import RunSpec
from tunesmith.data.dataset import Dataset, load_dataset
from tunesmith.errors import UserError
from tunesmith.files import read_yaml
from tunesmith.registry.runfolder import RunInfo, find_run, live_status, load_run_info, read_config, resolved_fields
from tunesmith.registry.store import Registry
from tunesmith.train.continued import base_path_of
from tunesmith.train.loop import TrainResult
from tunesmith.train.parallel import accel, distributed
from tunesmith.train.recipe import resolve_replay, run_registered, train_task
from tunesmith.train.run.checkpoint import latest_intact_checkpoint, prune_checkpoints, truncate_metrics
from tunesmith.train.run.guards import Budget
from tunesmith.ui import console
from tunesmith.workspace import Workspace, sweep_staging


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def resume_conflicts(run_dir: Path, config: Path | None, overrides: dict[str, Any]) -> list[str]:
    """Settings given alongside --resume that differ from the run's own: a resumed run cannot change course."""
    given: dict[str, Any] = {}
    if config is not None:
        loaded = read_yaml(config, fix="fix the YAML syntax at that line") if config.is_file() else None
        given.update(_flatten(loaded if isinstance(loaded, dict) else {}))
    given.update(_flatten({k: v for k, v in overrides.items() if v is not None}))
    current = _flatten(read_config(run_dir).model_dump(mode="json"))
    skip = resolved_fields(run_dir)
    conflicts = []
    for path, value in given.items():
        if value is None or path in skip or path == "versions" or path.startswith("versions."):
            continue
        saved = current.get(path, "(not set)")
        if (list(value) if isinstance(value, tuple) else value) != saved and str(value) != str(saved):
            conflicts.append(f"{path}: {saved} in the run, {value} given")
    return conflicts


def resumable_run(workspace: Workspace, ref: str, config: Path | None, overrides: dict[str, Any]) -> Path:
    """The run folder to continue, once every reason to refuse is ruled out (before any process is launched)."""
    run_dir = find_run(workspace, ref)
    conflicts = resume_conflicts(run_dir, config, overrides)
    if conflicts:
        raise UserError(
            "--resume continues the run with its own config.yaml; these settings would change it:\n" + "\n".join(f"  - {c}" for c in conflicts),
            fix="drop them to resume, or start a new run with them",
        )
    _check_resumable(workspace, run_dir)
    return run_dir


def _check_resumable(workspace: Workspace, run_dir: Path) -> Dataset:
    info = load_run_info(run_dir)
    if info.status == "completed":
        raise UserError(f"run {info.run_id} has already completed", fix="start a new run; this one's result is in its folder")
    if not distributed.launched():  # launched processes: the launching one checked, and process 0 may own the run already
        _check_not_running(info)
    dataset = load_dataset(workspace, info.dataset)
    if dataset.version != info.dataset_version:
        raise UserError(f"dataset '{info.dataset}' is now version {dataset.version}, the run trained on {info.dataset_version}", fix="start a new run")
    return dataset


def _check_not_running(info: RunInfo) -> None:
    """Two trainings of one run would overwrite each other's checkpoints."""
    run_owner = info.owner or {}
    if live_status(info.run_id, info.status, run_owner)[0] == "running" and run_owner and run_owner.get("pid") != os.getpid():
        raise UserError(
            f"run {info.run_id} is still being trained (pid {run_owner.get('pid')} on {run_owner.get('host')})",
            fix="wait for it to finish, or stop that process first",
        )


def resume(workspace: Workspace, run_dir: Path, budget: Budget | None = None) -> TrainResult:
    dataset = _check_resumable(workspace, run_dir)
    info, spec = load_run_info(run_dir), read_config(run_dir)
    distributed.init_from_env(spec.model.device)
    accel.check_env(spec)
    if not distributed.is_main():
        return _resume_as_worker(workspace, run_dir, spec, dataset, budget)
    sweep_staging(run_dir)  # a copy of the artefact cut short when the run was killed
    checkpoint = latest_intact_checkpoint(run_dir)
    if checkpoint is None:
        console.print(f"[yellow]run {info.run_id} has no complete, intact checkpoint: training it from the start in the same folder")
        truncate_metrics(run_dir / "metrics.jsonl", 0)
        prune_checkpoints(run_dir, set())
    distributed.share_from_main(checkpoint)
    if budget is not None:
        budget.announce(info.run_id, run_dir)
    base_path = base_path_of(spec)
    replay = resolve_replay(spec, workspace, base_path)
    registry = Registry(workspace.registry_db)
    registry.mark_running(info.run_id)
    return run_registered(registry, info.run_id, lambda: train_task(spec, dataset, replay, run_dir, base_path, budget, resume_from=checkpoint), run_dir)


def _resume_as_worker(workspace: Workspace, run_dir: Path, spec: RunSpec, dataset: Dataset, budget: Budget | None) -> TrainResult:
    """Another process of a resumed data-parallel run: it restores process 0's checkpoint (the same
    file, so the run folder must be on a filesystem every process sees) and keeps nothing itself."""
    checkpoint = distributed.share_from_main(None)  # process 0's pick, after it cleaned the folder
    console.quiet = True
    folder = distributed.worker_folder()
    try:
        shutil.copy2(run_dir / "run.json", folder / "run.json")
        base_path = base_path_of(spec)
        return train_task(spec, dataset, resolve_replay(spec, workspace, base_path), folder, base_path, budget, resume_from=checkpoint)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
