"""`tunesmith train --resume RUN`: continue a run from its latest complete checkpoint with the
run's own config.yaml, so the result equals the run that was never interrupted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tunesmith.errors import UserError
from tunesmith.models.loading import resolve_model_path
from tunesmith.registry.store import Registry
from tunesmith.runfolder import find_run, load_run_info, read_config
from tunesmith.train.checkpoint import latest_checkpoint, prune_checkpoints, truncate_metrics
from tunesmith.train.guards import Budget
from tunesmith.train.trainer import TrainResult, _train_in_folder, resolve_replay, run_registered
from tunesmith.data.dataset import load_dataset
from tunesmith.ui import console
from tunesmith.workspace import Workspace


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _resolved_fields(run_dir: Path) -> set[str]:
    """Fields the run resolved from 'auto' or a default (noted as comments atop its config.yaml)."""
    lines = (run_dir / "config.yaml").read_text(encoding="utf-8").splitlines()
    fields = {line[2:].split(":", 1)[0] for line in lines if line.startswith("# train.")}
    return fields | ({"train.lr_multiplier"} if "train.lr" in fields else set())


def resume_conflicts(run_dir: Path, config: Path | None, overrides: dict[str, Any]) -> list[str]:
    """Settings given alongside --resume that differ from the run's own: a resumed run cannot change course."""
    given: dict[str, Any] = {}
    if config is not None:
        loaded = yaml.safe_load(config.read_text(encoding="utf-8")) if config.is_file() else None
        given.update(_flatten(loaded if isinstance(loaded, dict) else {}))
    given.update(_flatten({k: v for k, v in overrides.items() if v is not None}))
    current = _flatten(read_config(run_dir).model_dump(mode="json"))
    skip = _resolved_fields(run_dir)
    conflicts = []
    for path, value in given.items():
        if value is None or path in skip or path == "versions" or path.startswith("versions."):
            continue
        saved = current.get(path, "(not set)")
        if (list(value) if isinstance(value, tuple) else value) != saved and str(value) != str(saved):
            conflicts.append(f"{path}: {saved} in the run, {value} given")
    return conflicts


def resume_run(workspace: Workspace, ref: str, config: Path | None, overrides: dict[str, Any], budget: Budget | None) -> TrainResult:
    run_dir = find_run(workspace, ref)
    conflicts = resume_conflicts(run_dir, config, overrides)
    if conflicts:
        raise UserError(
            "--resume continues the run with its own config.yaml; these settings would change it:\n" + "\n".join(f"  - {c}" for c in conflicts),
            fix="drop them to resume, or start a new run with them",
        )
    return resume(workspace, run_dir, budget)


def resume(workspace: Workspace, run_dir: Path, budget: Budget | None = None) -> TrainResult:
    info = load_run_info(run_dir)
    if info.status == "completed":
        raise UserError(f"run {info.run_id} has already completed", fix="start a new run; this one's result is in its folder")
    spec = read_config(run_dir)
    dataset = load_dataset(workspace, info.dataset)
    if dataset.version != info.dataset_version:
        raise UserError(f"dataset '{info.dataset}' is now version {dataset.version}, the run trained on {info.dataset_version}", fix="start a new run")
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        console.print(f"[yellow]run {info.run_id} has no complete checkpoint: training it from the start in the same folder")
        truncate_metrics(run_dir / "metrics.jsonl", 0)
        prune_checkpoints(run_dir, set())
    replay = resolve_replay(spec, workspace)
    registry = Registry(workspace.registry_db)
    registry.mark_running(info.run_id)
    base_path = resolve_model_path(spec.model.name)
    if spec.train.task == "classification":
        from tunesmith.train.classify import train_classifier

        return run_registered(registry, info.run_id, lambda: train_classifier(spec, dataset, run_dir, base_path, budget, resume_from=checkpoint))
    return run_registered(registry, info.run_id, lambda: _train_in_folder(spec, dataset, replay, run_dir, base_path, budget, resume_from=checkpoint))
