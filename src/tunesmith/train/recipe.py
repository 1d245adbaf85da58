"""`tunesmith train`: check every input (registry, model, data) → create the run folder and register
it → hand it to its task (tasks/: causal_lm, classification), which trains in the shared loop
(loop.py) → record how it ended, in run.json and the registry.

The same function runs in every process of a data-parallel run: process 0 owns the run folder,
the others train alike in a scratch folder. `prepared_for_launch` prepares the data before any
process starts; `resume.py` continues a run from its latest intact checkpoint."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunesmith.config import RunSpec
from tunesmith.data.dataset import Dataset, load_dataset, prepare_dataset
from tunesmith.data.prepare import length_limit_for
from tunesmith.errors import TrainingFailed, UserError
from tunesmith.registry.runfolder import load_run_info, new_run_id, save_run_info, write_config, write_json
from tunesmith.registry.store import Registry
from tunesmith.train.continued import base_path_of, check_system_prompt, continue_from, lineage
from tunesmith.train.keep_general import self_distilled
from tunesmith.train.loop import Replay, TrainResult, open_run_info
from tunesmith.train.parallel import accel, distributed
from tunesmith.train.run.guards import Budget
from tunesmith.train.tasks import task_for
from tunesmith.ui import console
from tunesmith.workspace import Workspace


def resolve_dataset(spec: RunSpec, workspace: Workspace) -> Dataset:
    if spec.data.path is not None:
        # As `data prepare --model`: examples this run would truncate stay out of validation and test.
        return prepare_dataset(
            spec.data.path,
            workspace,
            fmt=spec.data.format,
            seed=spec.data.seed,
            ratios=spec.data.split_ratios,
            options=spec.data.prepare,
            length=length_limit_for(spec),
        )
    return load_dataset(workspace, spec.data.dataset or "")


def resolve_replay(spec: RunSpec, workspace: Workspace, base_path: str) -> list[Replay]:
    """What each epoch mixes in besides the task: the training split of the replay dataset (validation
    and test stay out of training), and the base model's own answers to general prompts (keep_general)."""
    pools = []
    replay = spec.data.replay
    if replay is not None:
        source = prepare_dataset(replay.path, workspace) if replay.path is not None else load_dataset(workspace, replay.dataset or "")
        pools.append(Replay("replay", source.splits["train"], replay.fraction))
    keep = spec.data.keep_general
    if keep is not None and spec.train.task == "causal_lm":
        pools.append(Replay("keep_general", self_distilled(spec.model, base_path, keep, workspace.home), keep.fraction))
    return pools


def prepared_for_launch(spec: RunSpec, workspace: Workspace) -> RunSpec:
    """The spec with its files prepared into datasets (and its model found) by the launching process,
    before any training process starts: bad input then ends here, with its message and exit 2,
    instead of in process 0 while the others wait for it. The processes read the datasets by name."""
    spec = continue_from(spec, workspace)
    data: dict[str, Any] = {"dataset": resolve_dataset(spec, workspace).name, "path": None}
    replay = spec.data.replay
    if replay is not None and replay.path is not None:
        data["replay"] = replay.model_copy(update={"dataset": prepare_dataset(replay.path, workspace).name, "path": None})
    base_path = base_path_of(spec)
    if spec.data.keep_general is not None and spec.train.task == "causal_lm":
        self_distilled(spec.model, base_path, spec.data.keep_general, workspace.home)  # cached once here, not raced for by every process
    return spec.model_copy(update={"data": spec.data.model_copy(update=data)})


def train(spec: RunSpec, workspace: Workspace, budget: Budget | None = None) -> TrainResult:
    distributed.init_from_env(spec.model.device)
    accel.check_env(spec)
    spec = continue_from(spec, workspace)  # the run named by model.from_run, if any: its base, method and folder
    if not distributed.is_main():
        return _train_as_worker(spec, workspace, budget)
    # Every input is checked before anything is created: the registry can be opened, the model is
    # found, the data prepared. A bad --model then leaves no run folder and no dataset behind.
    registry = Registry(workspace.registry_db)
    base_path = base_path_of(spec)
    dataset = resolve_dataset(spec, workspace)
    replay = resolve_replay(spec, workspace, base_path)
    check_system_prompt(spec, workspace, dataset)
    distributed.share_from_main(dataset.name)
    run_id = new_run_id(spec.name or dataset.name)
    run_dir = workspace.run_dir(run_id)
    run_dir.mkdir(parents=True)
    write_config(run_dir, spec)
    write_json(run_dir / "dataset.json", dataset.manifest.model_dump(mode="json"))
    # run.json from the first moment, owner included: a run killed while its model loads is still a
    # run that `runs list` reports truly and `train --resume` starts again (training fills in the rest)
    open_run_info(run_dir, spec, dataset, base_path)
    parent = lineage(spec).get("parent_run")
    registry.start_run(run_id, spec.name, spec.model.name, spec.train.method, dataset.name, dataset.version, run_dir, parent_run=parent)
    if budget is not None:
        budget.announce(run_id, run_dir)
    return run_registered(registry, run_id, lambda: train_task(spec, dataset, replay, run_dir, base_path, budget), run_dir, new_run=True)


def _train_as_worker(spec: RunSpec, workspace: Workspace, budget: Budget | None) -> TrainResult:
    """Another process of a data-parallel run: the same training; process 0 keeps the run folder."""
    dataset = load_dataset(workspace, distributed.share_from_main(None))
    console.quiet = True
    run_dir = distributed.worker_folder()
    try:
        base_path = base_path_of(spec)
        return train_task(spec, dataset, resolve_replay(spec, workspace, base_path), run_dir, base_path, budget)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def run_registered(registry: Registry, run_id: str, work: Callable[[], TrainResult], run_dir: Path, new_run: bool = False) -> TrainResult:
    """Run the training and record how it ended, in run.json and the registry. The original error
    is what the user sees: recording it (on a full disk, say) may fail too, and must not replace it."""
    try:
        result = work()
    except BaseException as exc:
        if new_run and isinstance(exc, UserError) and not isinstance(exc, TrainingFailed) and not (run_dir / "metrics.jsonl").exists():
            # bad input found before training began (a folder that is not a model, say): leave nothing behind
            shutil.rmtree(run_dir, ignore_errors=True)
            _quietly(registry.forget_run, run_id)
            raise
        failure = _as_training_failure(exc, run_id, run_dir)
        status = "stopped" if isinstance(exc, KeyboardInterrupt) else "failed"
        _quietly(_record_end, run_dir, status, failure or exc)
        _quietly(registry.finish_run, run_id, status, None)
        if failure is not None:
            raise failure from None
        raise
    registry.finish_run(run_id, result.info.status, result.info.best_val_loss)
    return result


def _as_training_failure(exc: BaseException, run_id: str, run_dir: Path) -> TrainingFailed | None:
    """A write that failed mid-run (disk full, folder gone read-only), or memory that ran out, as the
    one line a user needs."""
    if _out_of_memory(exc):
        return TrainingFailed(
            f"training run {run_id} ran out of memory ({_memory_shortage(exc)})",
            fix="train again with less memory per forward pass, each giving the same result: train.gradient_checkpointing: true "
            "(recomputes activations instead of keeping them), train.tokens_per_forward: N (each batch in passes of at most N "
            "tokens); or a smaller train.batch_size or train.max_seq_len, or method qlora (a 4-bit base)",
        )
    if not isinstance(exc, OSError):
        return None
    import errno

    where = exc.filename or run_dir
    if exc.errno == errno.ENOSPC:
        return TrainingFailed(f"disk full while training run {run_id}, writing {where}", fix=f"free space and `tunesmith train --resume {run_id}`")
    return TrainingFailed(
        f"training run {run_id} could not write {where}: {exc.strerror or exc}", fix=f"fix the folder, then `tunesmith train --resume {run_id}`"
    )


def _out_of_memory(exc: BaseException) -> bool:
    """torch's CUDA (and other accelerators') out-of-memory error, or a CPU allocation that failed."""
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or (isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))


def _memory_shortage(exc: BaseException) -> str:
    """The allocator's own words on what it could not allocate, without its source location or advice."""
    import re

    sentences = re.split(r"\.\s+", " ".join(str(exc).split()))
    wanted = [s for s in sentences if re.match(r"(CUDA out of memory|Tried to allocate|GPU \d+ has a total)", s)]
    wanted += [s[s.index("can't allocate") :] for s in sentences if "can't allocate memory" in s]
    return ". ".join(wanted).rstrip(".") if wanted else sentences[0][:200]


def _record_end(run_dir: Path, status: str, exc: BaseException) -> None:
    """run.json says how a run ended when the loop could not say it itself (it says "stopped" on Ctrl-C)."""
    info = load_run_info(run_dir)
    if info.status == "running":
        info.status, info.stop_reason = status, (str(exc).splitlines() or [type(exc).__name__])[0]
        save_run_info(run_dir, info)


def _quietly(action: Callable[..., None], *args: Any) -> None:
    try:
        action(*args)
    except Exception as exc:  # noqa: BLE001 - the error being reported matters more than this bookkeeping
        console.print(f"[yellow]could not record the run's end ({exc}); `tunesmith runs list` reports it from its folder")


def train_task(
    spec: RunSpec, dataset: Dataset, replay: list[Replay], run_dir: Path, base_path: str, budget: Budget | None, resume_from: Path | None = None
) -> TrainResult:
    """The run's task trained in run_dir, in every process of a data-parallel run alike."""
    return task_for(spec.train.task).train(spec, dataset, replay, run_dir, base_path, budget, resume_from)
