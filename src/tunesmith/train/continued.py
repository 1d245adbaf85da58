"""Continued fine-tuning (`train --from RUN`, `model.from_run`): a run that starts from another run's
trained adapter or weights, on that run's base and with its chat template, instead of from the base.

The run named is resolved once, before anything is created, into its folder's absolute path (what
the run's config.yaml then records, so every process of the run and a later --resume read the same
parent), and the spec takes the parent's base model, and its method and method settings unless the
user chose a method. run.json records the parent's run id (parent_run). The system message stays
the examples' own (check_system_prompt warns when the parent's is missing from them).

What the new run loads (`base_path_of`, `start_adapter`):

| parent's method        | new run's method           | base loaded                | then                                   |
| ---------------------- | -------------------------- | -------------------------- | -------------------------------------- |
| full                   | any                        | the parent's `model/`      | the method applied as usual            |
| an adapter method      | the same (lora <-> qlora)  | the parent's base          | the parent's adapter, trainable        |
| lora, dora             | full                       | the parent's base          | the parent's adapter merged, all learn |
| anything else          | refused, naming both methods and what would work                        |
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.config import RunSpec, TrainSpec, validate_spec
from tunesmith.data.dataset import Dataset, trained_system_prompt
from tunesmith.errors import UserError
from tunesmith.models.loading import resolve_model_path
from tunesmith.models.methods import continuable_methods, method_for
from tunesmith.registry.runfolder import RunInfo, find_run, load_run_info, read_config
from tunesmith.ui import console
from tunesmith.workspace import Workspace


def continue_from(spec: RunSpec, workspace: Workspace) -> RunSpec:
    """The spec of a run that continues `spec.model.from_run`, checked; unchanged when it names none.
    Idempotent: a spec already resolved (its from_run a run folder) resolves to itself."""
    ref = spec.model.from_run
    if ref is None:
        return spec
    if spec.train.task != "causal_lm":
        raise UserError(
            "continued fine-tuning (model.from_run / --from) is for causal_lm runs", where="model.from_run", fix="remove it, or train a causal_lm run"
        )
    try:
        folder = find_run(workspace, ref)
    except UserError as exc:
        raise UserError(f"model.from_run / --from: {exc}", fix=exc.fix) from None
    info, parent_spec = load_run_info(folder), read_config(folder)
    if info.task != "causal_lm":
        raise UserError(f"run {info.run_id} is a {info.task} run; only causal_lm runs can be continued", where="model.from_run")
    if info.status not in ("completed", "stopped") or not (folder / info.artefact).is_dir():
        raise UserError(
            f"run {info.run_id} has no trained {info.artefact} to continue from (status {info.status})",
            where="model.from_run",
            fix=f"finish it first (`tunesmith train --resume {info.run_id}`), or name a completed run",
        )
    if "name" in spec.model.model_fields_set and spec.model.name not in (info.base_model, info.base_model_path):
        raise UserError(
            f"model.name {spec.model.name!r} is not the base of run {info.run_id} ({info.base_model}); a continued run keeps its parent's base",
            where="--model / model.name",
            fix="leave the model out: it comes from the run named by --from",
        )
    train = spec.train if "method" in spec.train.model_fields_set else _with_method_of(spec.train, parent_spec.train)
    allowed = continuable_methods(info.method)
    if train.method not in allowed:
        raise UserError(
            f"a {info.method} run ({info.run_id}) cannot be continued with method {train.method}",
            where="--method / train.method",
            fix=f"use method {' or '.join(allowed)}, or train {train.method} from the base model instead of --from",
        )
    if method_for(info.method).peft_config is not None and method_for(train.method).peft_config is not None:
        train = _with_sections_of(train, parent_spec.train)  # the adapter's own shape (rank, virtual tokens) is what trains on
    model = spec.model.model_copy(update={"name": info.base_model, "from_run": str(folder)})
    return spec.model_copy(update={"model": model, "train": train})


def _with_method_of(train: TrainSpec, parent: TrainSpec) -> TrainSpec:
    """The run's train settings with the parent's method and that method's settings sections."""
    data = {key: value for key, value in train.model_dump(mode="json").items() if key not in ("lora", "qlora", "prompt_tuning", "prefix_tuning")}
    parent_data = parent.model_dump(mode="json")
    sections = {key: parent_data[key] for key in ("lora", "qlora", "prompt_tuning", "prefix_tuning") if key in parent_data}
    return validate_spec(TrainSpec, {**data, "method": parent.method, **sections}, "train (with the method of the run named by --from)")


def _with_sections_of(train: TrainSpec, parent: TrainSpec) -> TrainSpec:
    return train.model_copy(update={key: getattr(parent, key) for key in ("lora", "prompt_tuning", "prefix_tuning")})


def parent_info(spec: RunSpec) -> RunInfo | None:
    return load_run_info(Path(spec.model.from_run)) if spec.model.from_run else None


def base_path_of(spec: RunSpec) -> str:
    """The folder (or hub id) the run's model is loaded from: the base model, or for a continued run
    the parent's full weights, or the parent's own base under its adapter."""
    parent = parent_info(spec)
    if parent is None:
        return resolve_model_path(spec.model.name)
    if method_for(parent.method).peft_config is None:
        return str(Path(spec.model.from_run or "") / parent.artefact)
    return parent.base_model_path


def start_adapter(spec: RunSpec) -> Path | None:
    """The parent's adapter folder the run starts from (None: it starts from the base's weights)."""
    parent = parent_info(spec)
    if parent is None or method_for(parent.method).peft_config is None:
        return None
    return Path(spec.model.from_run or "") / parent.artefact


def check_system_prompt(spec: RunSpec, workspace: Workspace, dataset: Dataset) -> None:
    """A parent trained with one system message, continued on examples without it, learns to answer
    without it (and is asked without it by generate, chat and the server, which add the system
    message of the run's own examples): said before training, since it is rarely what was meant."""
    parent = parent_info(spec)
    if parent is None:
        return
    theirs = trained_system_prompt(workspace, parent.dataset)
    if theirs is not None and dataset.system_prompt != theirs:
        console.print(
            f"[yellow]run {parent.run_id} was trained with the system message {theirs[:80]!r}, which the examples of {dataset.name} do not all carry[/]: "
            "this run learns to answer without it; add it to the examples to keep it",
            soft_wrap=True,
        )


def lineage(spec: RunSpec) -> dict[str, Any]:
    """run.json's record of where the run started: the parent's run id."""
    parent = parent_info(spec)
    return {"parent_run": parent.run_id} if parent is not None else {}
