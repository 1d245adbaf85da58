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

from tunesmith._version import __version__
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
    parent_run: str | None = None  # the run this one continued (model.from_run), by run id
    study: dict[str, Any] | None = None  # a search's trial: {"name": the study, "trial": its number} (tunesmith tune)


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


DAMAGED_RUN_FIX = "restore the run folder from a backup, or train the run again (its config.yaml, if intact, repeats it)"


def config_data(run_dir: Path) -> dict[str, Any]:
    """The run's config.yaml as a mapping, unchecked: the one place that reads the file (read_config
    checks it; `runs reindex` takes what it can from a damaged one)."""
    from tunesmith.files import read_yaml

    path = run_dir / "config.yaml"
    if not path.is_file():
        raise UserError(f"{run_dir} has no config.yaml", fix=DAMAGED_RUN_FIX)
    data = read_yaml(path, fix=DAMAGED_RUN_FIX) or {}
    if not isinstance(data, dict):
        raise UserError(f"{path} is damaged: not a mapping of sections", fix=DAMAGED_RUN_FIX)
    return data


def read_config(run_dir: Path) -> RunSpec:
    """The run's resolved config.yaml, checked like any config; damage is named, never a traceback."""
    from tunesmith.config import validate_spec

    path = run_dir / "config.yaml"
    data = config_data(run_dir)
    # Every section is written out in full; one missing means the file was cut short, and defaults
    # filling in for it would quietly change what the run was.
    missing = [section for section in ("model", "data", "train", "eval") if not isinstance(data.get(section), dict)]
    if missing:
        raise UserError(f"{path} is damaged (cut short?): no {', '.join(missing)} section", fix=DAMAGED_RUN_FIX)
    data.pop("versions", None)
    # Resolved configs always name data.keep_general; one without it was trained before the setting
    # existed, without self-distilled replay, and a resume must not switch the replay on halfway.
    data["data"].setdefault("keep_general", None)
    return validate_spec(RunSpec, data, str(path))


def resolved_fields(run_dir: Path) -> set[str]:
    """Fields the run resolved from 'auto' or a default (noted as comments atop its config.yaml)."""
    from tunesmith.files import read_text

    lines = read_text(run_dir / "config.yaml", fix=DAMAGED_RUN_FIX).splitlines()
    fields = {line[2:].split(":", 1)[0] for line in lines if line.startswith("# train.")}
    return fields | ({"train.lr_multiplier"} if "train.lr" in fields else set())


def name_base_model(artefact: Path, base_model: str) -> None:
    """A PEFT adapter's adapter_config.json names its base by the path it was loaded from, which is
    this machine's model cache; the artefact names the model as the user did (`smollm2-135m-instruct`,
    a hub id or their own path). run.json keeps the resolved path (base_model_path)."""
    config = artefact / "adapter_config.json"
    if config.is_file():
        payload = json.loads(config.read_text(encoding="utf-8"))
        payload["base_model_name_or_path"] = base_model
        write_json(config, payload)


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
    from tunesmith.files import read_model

    return read_model(run_dir / "run.json", RunInfo, fix=DAMAGED_RUN_FIX)


def find_run(workspace: Workspace, ref: str) -> Path:
    """A run id in the workspace, a path to a run folder, or the run's --name when one run has it."""
    candidate = Path(ref)
    if (candidate / "run.json").is_file():
        folder = candidate.resolve()
        if folder.parent != workspace.runs.resolve():
            _say_opened_by_path(folder, workspace)
        return folder
    if "/" not in ref and ref not in (".", ".."):
        folder = workspace.run_dir(ref)
        if (folder / "run.json").is_file():
            return folder
        named = runs_named(workspace, ref)
        if len(named) == 1:
            return named[0]
        if named:
            raise UserError(f"{len(named)} runs are named '{ref}': {', '.join(f.name for f in named)}", fix="give the run id instead of the name")
    raise UserError(f"no run '{ref}' in {workspace.runs}", fix="`tunesmith runs list` shows the run ids")


def _say_opened_by_path(folder: Path, workspace: Workspace) -> None:
    """A folder from elsewhere (shared, downloaded) is data, not code: say that it is, and what it may run."""
    from rich.markup import escape

    from tunesmith.config import remote_code_allowed
    from tunesmith.ui import console

    code = "remote code ON (--trust-remote-code)" if remote_code_allowed() else "remote code off (its config cannot turn it on)"
    console.print(escape(f"opening run folder {folder} by path, not from the registry in {workspace.home}; {code}"), highlight=False, soft_wrap=True)


def runs_named(workspace: Workspace, name: str) -> list[Path]:
    """Run folders whose config says `name: NAME`. A run id starts with its name (new_run_id), so only
    those folders are read."""
    try:
        prefix = safe_name(name, "run name")
    except UserError:
        return []
    found = []
    for folder in sorted(workspace.runs.glob(f"{prefix}-*")) if workspace.runs.is_dir() else []:
        config = folder / "config.yaml"
        if not (folder / "run.json").is_file() or not config.is_file():
            continue
        try:
            data = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError, OSError):
            continue  # a damaged folder is not the run asked for; opening it by id says what is wrong
        if isinstance(data, dict) and data.get("name") == name:
            found.append(folder)
    return found


def replace_folder(source: Path, target: Path, leave_out: tuple[str, ...] = ()) -> None:
    """Copy a folder into place atomically: the old target stays whole until the new one is complete.
    `leave_out`: file names not copied."""
    staging = staging_dir(target.parent, target.name)  # named by its owner: a copy cut short by a kill is swept on resume
    shutil.rmtree(staging)
    shutil.copytree(source, staging, ignore=shutil.ignore_patterns(*leave_out) if leave_out else None)
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
