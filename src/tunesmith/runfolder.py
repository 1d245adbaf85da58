"""The run folder: everything needed to understand or repeat a run. The registry only indexes it."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict

from tunesmith import __version__
from tunesmith.config import RunSpec, spec_to_yaml
from tunesmith.errors import UserError
from tunesmith.workspace import Workspace, owner, process_alive, safe_name, staging_dir

LIBRARIES = ("torch", "transformers", "peft", "accelerate", "tokenizers", "safetensors")


class RunInfo(BaseModel):
    """run.json: what was trained and where its weights are."""

    model_config = ConfigDict(extra="forbid")
    run_id: str
    status: str
    base_model: str
    base_model_path: str
    method: str
    artefact: str  # "adapter" or "model", a folder inside the run
    dataset: str
    dataset_version: str
    end_of_turn_ids: list[int]
    best_step: int | None = None
    best_epoch: float | None = None
    best_val_loss: float | None = None
    train_seconds: float | None = None
    stop_reason: str | None = None
    dropped_examples: list[str] = []
    task: str = "causal_lm"
    labels: list[str] | None = None  # classification: the class names, in the head's output order
    best_metrics: dict[str, float] | None = None  # classification: validation accuracy and macro-F1 of the kept checkpoint
    owner: dict[str, Any] | None = None  # the training process (host, pid, start time) while status is "running": see live_status


def versions() -> dict[str, str]:
    found = {"tunesmith": __version__, "python": sys.version.split()[0]}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def new_run_id(label: str) -> str:
    return safe_name(f"{label}-{datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(2)}", "run id")


def write_config(run_dir: Path, spec: RunSpec, notes: dict[str, str] | None = None) -> None:
    """The resolved config; `notes` (comments on top) say where resolved values came from."""
    head = "".join(f"# train.{key}: {note}\n" for key, note in (notes or {}).items())
    (run_dir / "config.yaml").write_text(head + spec_to_yaml(spec, {"versions": versions()}), encoding="utf-8")


def read_config(run_dir: Path) -> RunSpec:
    from tunesmith.config import validate_spec

    path = run_dir / "config.yaml"
    if not path.is_file():
        raise UserError(f"{run_dir} has no config.yaml", fix="this run cannot be resumed; start a new one")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    data.pop("versions", None)
    return validate_spec(RunSpec, data, str(path))


def write_json(path: Path, payload: Any) -> None:
    """Write via a temporary file and rename: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)


def save_run_info(run_dir: Path, info: RunInfo) -> None:
    if info.status == "running":
        info.owner = owner()  # whoever writes "running" is the process doing the work
    write_json(run_dir / "run.json", info.model_dump(mode="json"))


def load_run_info(run_dir: Path) -> RunInfo:
    return RunInfo.model_validate_json((run_dir / "run.json").read_text(encoding="utf-8"))


def find_run(workspace: Workspace, ref: str) -> Path:
    """A run id in the workspace, or a path to a run folder."""
    candidate = Path(ref)
    if (candidate / "run.json").is_file():
        return candidate.resolve()
    if "/" not in ref and ref not in (".", ".."):
        folder = workspace.run_dir(ref)
        if (folder / "run.json").is_file():
            return folder
    raise UserError(f"no run '{ref}' in {workspace.runs}", fix="`tunesmith runs list` shows the run ids")


def replace_folder(source: Path, target: Path) -> None:
    """Copy a folder into place atomically: the old target stays whole until the new one is complete."""
    staging = staging_dir(target.parent, target.name)  # named by its owner: a copy cut short by a kill is swept on resume
    shutil.rmtree(staging)
    shutil.copytree(source, staging)
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)


# ---------------------------------------------------------------- a run's status as it really is

INTERRUPTED = "interrupted"


def live_status(run_id: str, status: str, run_owner: dict[str, Any] | str | None) -> tuple[str, str | None]:
    """(status, why) with "running" only while the process that trains the run is alive: a run whose
    process was killed, crashed or lost its machine without a word is "interrupted". A run owned by
    another host stays "running" (we cannot look), and so does one from before owners were recorded."""
    if status != "running":
        return status, None
    if isinstance(run_owner, str):
        try:
            run_owner = json.loads(run_owner)
        except ValueError:
            run_owner = None
    if not isinstance(run_owner, dict):
        return status, None
    alive = process_alive(run_owner.get("host"), run_owner.get("pid"), run_owner.get("started"))
    if alive is False:
        return INTERRUPTED, (
            f"its training process (pid {run_owner.get('pid')}) ended without finishing it (killed, crashed or the machine restarted); "
            f"`tunesmith train --resume {run_id}` continues from its last checkpoint"
        )
    if alive is None:
        return status, f"on host {run_owner.get('host')} (pid {run_owner.get('pid')}): not checked from here"
    return status, None


def run_status(run_dir: Path, status: str, run_owner: dict[str, Any] | str | None) -> tuple[str, str | None]:
    """live_status of a registry row, with the folder as the truth: when the registry still says
    "running" for a process that is gone, run.json may know how the run ended (its process wrote it
    and then could not update the registry: a full disk, say)."""
    found, why = live_status(run_dir.name, status, run_owner)
    if found == INTERRUPTED:
        try:
            recorded = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return found, why
        if isinstance(recorded, dict) and recorded.get("status") not in (None, "running"):
            return recorded["status"], recorded.get("stop_reason")
    return found, why
