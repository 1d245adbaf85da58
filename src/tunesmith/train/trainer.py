"""`tunesmith train`: load → check → train, validating and checkpointing as it goes → keep the best → save.

Every checkpoint can be resumed (`train --resume RUN`, see resume.py) and the resumed run is
step for step the run that was never interrupted: batches are a pure function of seed and
epoch, and the checkpoint holds the optimiser, the schedule, the RNGs and the step."""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from tunesmith.config import RunSpec, TrainSpec
from tunesmith.data.dataset import Dataset, load_dataset, prepare_dataset
from tunesmith.data.prepare import length_limit_for
from tunesmith.data.example import Example
from tunesmith.errors import TrainingFailed, UserError
from tunesmith.models.loading import resolve_model_path
from tunesmith.registry.store import Registry
from tunesmith.runfolder import RunInfo, load_run_info, name_base_model, new_run_id, replace_folder, save_run_info, write_config, write_json
from tunesmith.train.checkpoint import (
    STATE_FILE, checkpoint_dir, latest_checkpoint, load_state, prune_checkpoints, restore_rng, restore_weights, rng_state, save_checkpoint,
    test_kill, truncate_metrics,
)
from tunesmith.train.callbacks import Probes, build_probes
from tunesmith.train import accel, distributed, sharding, zero
from tunesmith.train.collate import Encoded, collate, encode_all, end_of_turn_ids
from tunesmith.train.estimate import estimate_training, print_estimate
from tunesmith.train.guards import Budget, Monitor, peak_memory_mb
from tunesmith.train.objective import CAUSAL_LM, Objective
from tunesmith.train.loss import summed_loss
from tunesmith.train.methods import apply_method, artefact_kind, count_parameters, load_for_method
from tunesmith.train.plot import plot_loss
from tunesmith.train.layout import plan_layout
from tunesmith.train.tracking import open_trackers
from tunesmith.train.settings import make_schedule, plan_steps, replay_count, replay_sample, resolve_settings
from tunesmith.ui import console, progress
from tunesmith.workspace import Workspace


class Diverged(ArithmeticError):
    """The loss or the gradient norm stopped being a finite number."""


@dataclass
class TrainResult:
    run_dir: Path
    info: RunInfo
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Items:
    """Encoded examples; the replay draw differs per epoch but not per process."""

    train: list[Encoded]
    validation: list[Encoded]
    dropped: list[str]
    replay: list[Encoded] = field(default_factory=list)
    replay_per_epoch: int = 0

    def for_epoch(self, seed: int, epoch: int) -> list[Encoded]:
        return self.train + replay_sample(self.replay, self.replay_per_epoch, seed, epoch)


def resolve_dataset(spec: RunSpec, workspace: Workspace) -> Dataset:
    if spec.data.path is not None:
        # As `data prepare --model`: examples this run would truncate stay out of validation and test.
        return prepare_dataset(spec.data.path, workspace, fmt=spec.data.format, seed=spec.data.seed, ratios=spec.data.split_ratios,
                               options=spec.data.prepare, length=length_limit_for(spec))
    return load_dataset(workspace, spec.data.dataset or "")


def resolve_replay(spec: RunSpec, workspace: Workspace) -> list[Example]:
    """The training split of the replay dataset (validation and test stay out of training)."""
    replay = spec.data.replay
    if replay is None:
        return []
    source = prepare_dataset(replay.path, workspace) if replay.path is not None else load_dataset(workspace, replay.dataset or "")
    return source.splits["train"]


def prepared_for_launch(spec: RunSpec, workspace: Workspace) -> RunSpec:
    """The spec with its files prepared into datasets (and its model found) by the launching process,
    before any training process starts: bad input then ends here, with its message and exit 2,
    instead of in process 0 while the others wait for it. The processes read the datasets by name."""
    data: dict[str, Any] = {"dataset": resolve_dataset(spec, workspace).name, "path": None}
    replay = spec.data.replay
    if replay is not None and replay.path is not None:
        data["replay"] = replay.model_copy(update={"dataset": prepare_dataset(replay.path, workspace).name, "path": None})
    resolve_model_path(spec.model.name)
    return spec.model_copy(update={"data": spec.data.model_copy(update=data)})


def train(spec: RunSpec, workspace: Workspace, budget: Budget | None = None) -> TrainResult:
    distributed.init_from_env(spec.model.device)
    accel.check_env(spec)
    if not distributed.is_main():
        return _train_as_worker(spec, workspace, budget)
    # Every input is checked before anything is created: the registry can be opened, the model is
    # found, the data prepared. A bad --model then leaves no run folder and no dataset behind.
    registry = Registry(workspace.registry_db)
    base_path = resolve_model_path(spec.model.name)
    dataset = resolve_dataset(spec, workspace)
    replay = resolve_replay(spec, workspace)
    distributed.share_from_main(dataset.name)
    run_id = new_run_id(spec.name or dataset.name)
    run_dir = workspace.run_dir(run_id)
    run_dir.mkdir(parents=True)
    write_config(run_dir, spec)
    write_json(run_dir / "dataset.json", dataset.manifest.model_dump(mode="json"))
    # run.json from the first moment, owner included: a run killed while its model loads is still a
    # run that `runs list` reports truly and `train --resume` starts again (training fills in the rest)
    save_run_info(run_dir, RunInfo(
        run_id=run_id, status="running", base_model=spec.model.name, base_model_path=base_path, method=spec.train.method,
        artefact=artefact_kind(spec.train.method), dataset=dataset.name, dataset_version=dataset.version, end_of_turn_ids=[], task=spec.train.task,
    ))
    registry.start_run(run_id, spec.name, spec.model.name, spec.train.method, dataset.name, dataset.version, run_dir)
    return run_registered(registry, run_id, lambda: train_task(spec, dataset, replay, run_dir, base_path, budget), run_dir, new_run=True)


def _train_as_worker(spec: RunSpec, workspace: Workspace, budget: Budget | None) -> TrainResult:
    """Another process of a data-parallel run: the same training; process 0 keeps the run folder."""
    dataset = load_dataset(workspace, distributed.share_from_main(None))
    console.quiet = True
    run_dir = distributed.worker_folder()
    try:
        return train_task(spec, dataset, resolve_replay(spec, workspace), run_dir, resolve_model_path(spec.model.name), budget)
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
    """A write that failed mid-run (disk full, folder gone read-only) as the one line a user needs."""
    if not isinstance(exc, OSError):
        return None
    import errno

    where = exc.filename or run_dir
    if exc.errno == errno.ENOSPC:
        return TrainingFailed(f"disk full while training run {run_id}, writing {where}", fix=f"free space and `tunesmith train --resume {run_id}`")
    return TrainingFailed(f"training run {run_id} could not write {where}: {exc.strerror or exc}", fix=f"fix the folder, then `tunesmith train --resume {run_id}`")


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


def _encode(spec: RunSpec, dataset: Dataset, replay: list[Example], tokenizer: Any) -> Items:
    cfg = spec.train
    train_items, dropped = encode_all(tokenizer, dataset.splits["train"], cfg.max_seq_len, cfg.train_on)
    val_items, _ = encode_all(tokenizer, dataset.splits["validation"], cfg.max_seq_len, cfg.train_on)
    if not train_items:
        raise UserError("no training example has a token left to learn", fix=f"raise train.max_seq_len (now {cfg.max_seq_len}) or check the assistant turns")
    if dropped:
        console.print(f"[yellow]dropped {len(dropped)} example(s) with nothing to learn after truncation to {cfg.max_seq_len} tokens")
    items = Items(train_items, val_items, dropped)
    if replay and spec.data.replay is not None:
        items.replay, _ = encode_all(tokenizer, replay, cfg.max_seq_len, cfg.train_on)
        items.replay_per_epoch = replay_count(len(train_items), spec.data.replay.fraction) if items.replay else 0
        console.print(f"replay: {items.replay_per_epoch} of {len(items.replay)} replay examples mixed into each epoch")
    return items


def train_task(
    spec: RunSpec, dataset: Dataset, replay: list[Example], run_dir: Path, base_path: str, budget: Budget | None, resume_from: Path | None = None
) -> TrainResult:
    """The run's task trained in run_dir, in every process of a data-parallel run alike."""
    if spec.train.task == "classification":
        from tunesmith.train.classify import train_classifier

        return train_classifier(spec, dataset, run_dir, base_path, budget, resume_from)
    return _train_in_folder(spec, dataset, replay, run_dir, base_path, budget, resume_from)


def _train_in_folder(
    spec: RunSpec, dataset: Dataset, replay: list[Example], run_dir: Path, base_path: str, budget: Budget | None, resume_from: Path | None = None
) -> TrainResult:
    model, tokenizer, device = load_for_method(spec.model, base_path, spec.train)
    items = _encode(spec, dataset, replay, tokenizer)
    cfg, notes = resolve_settings(spec.train, len(items.train) + items.replay_per_epoch, device)
    spec = spec.model_copy(update={"train": cfg})
    if resume_from is None:
        write_config(run_dir, spec, notes)  # the numbers the run actually used
    torch.manual_seed(cfg.seed)  # right before the adapters are initialised, so the same seed gives the same start
    model = apply_method(model, cfg)
    trainable, total = count_parameters(model)
    console.print(f"training {trainable:,} of {total:,} parameters ({cfg.method}) on {len(items.train)} examples, device {device}")
    if resume_from is None:
        print_estimate(estimate_training(model, tokenizer, device, cfg, items.train, items.validation, len(items.dropped)), run_dir)
    info = _run_info(spec, dataset, run_dir, base_path, tokenizer, items, resuming=resume_from is not None)
    loop = TrainingLoop(model, tokenizer, device, cfg, items, run_dir, info, budget, spec, build_probes(spec, dataset.splits["validation"]))
    if resume_from is not None:
        loop.restore(resume_from)
    status, reason = _run_interruptible(loop)
    return _finish(loop, status, reason)


def _run_info(spec: RunSpec, dataset: Dataset, run_dir: Path, base_path: str, tokenizer: Any, items: Items, resuming: bool) -> RunInfo:
    info = load_run_info(run_dir) if resuming else RunInfo(
        run_id=run_dir.name, status="running", base_model=spec.model.name, base_model_path=base_path, method=spec.train.method,
        artefact=artefact_kind(spec.train.method), dataset=dataset.name, dataset_version=dataset.version,
        end_of_turn_ids=end_of_turn_ids(tokenizer), dropped_examples=items.dropped,
    )
    info.status, info.stop_reason = "running", None
    save_run_info(run_dir, info)
    return info


def _run_interruptible(loop: "TrainingLoop") -> tuple[str, str | None]:
    """Ctrl-C leaves a run marked stopped with the command that continues it."""
    try:
        return loop.run()
    except KeyboardInterrupt:
        info = loop.info
        info.status, info.stop_reason = "stopped", f"interrupted; `tunesmith train --resume {info.run_id}` continues from step {loop.last_saved or 0}"
        save_run_info(loop.run_dir, info)
        console.print(f"[yellow]{info.stop_reason}")
        raise


def _finish(loop: "TrainingLoop", status: str, reason: str | None) -> TrainResult:
    """The best checkpoint becomes the run's artefact (the latest one if none was validated yet)."""
    info, run_dir = loop.info, loop.run_dir
    source = info.best_step if info.best_step is not None else loop.last_saved
    # The optimiser state stays in checkpoints/ (for --resume); the artefact is what a user ships.
    replace_folder(checkpoint_dir(run_dir, source), run_dir / info.artefact, leave_out=(STATE_FILE,))
    name_base_model(run_dir / info.artefact, info.base_model)
    info.status, info.stop_reason, info.train_seconds = status, reason, round(loop.elapsed(), 1)
    save_run_info(run_dir, info)
    plot_loss(loop.history, run_dir / "loss.png")
    return TrainResult(run_dir, info, loop.history)


class TrainingLoop:
    """One run's optimiser, schedule and counters; `state_dict` is what a checkpoint needs to continue exactly.
    The objective says what a batch's loss and a validation are (causal LM by default, see objective.py)."""

    def __init__(
        self, model, tokenizer, device, cfg: TrainSpec, items: Items, run_dir: Path, info: RunInfo, budget: Budget | None,
        spec: RunSpec, probes: Probes | None = None, objective: Objective = CAUSAL_LM,
    ):
        self.model, self.tokenizer, self.device, self.cfg, self.items = model, tokenizer, device, cfg, items
        self.objective = objective
        self.run_dir, self.info, self.budget = run_dir, info, budget or Budget()
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.params = [p for p in model.parameters() if p.requires_grad]
        distributed.same_start(self.params)
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.plan = plan_steps(cfg, len(items.train) + items.replay_per_epoch)
        self.schedule = make_schedule(self.optimizer, cfg, self.plan.total_steps)
        self.monitor = Monitor(cfg.early_stopping_patience)
        self.step, self.tokens_seen, self.seconds_before = 0, 0, 0.0
        self.last_saved: int | None = None
        self.history: list[dict] = []
        self.started = time.perf_counter()
        self.spec, self.probes, self.tracker = spec, probes or Probes([]), None
        self.layout = plan_layout(model, cfg, items.train, device, objective.packs)
        # sharding.take_over (FSDP) and zero.take_over (DeepSpeed) swap in their own step and gathering
        self.step_fn, self.gather_optimizer, self.gather_weights = _optimizer_step, sharding.optimizer_state, sharding.full_weights
        console.print(self.layout.describe())

    def elapsed(self) -> float:
        """Training seconds over the whole run, earlier sessions included."""
        return self.seconds_before + time.perf_counter() - self.started

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step, "epoch": self.plan.epoch_of(self.step), "position": self.step - (self.plan.epoch_of(self.step) - 1) * self.plan.steps_per_epoch,
            "tokens_seen": self.tokens_seen, "train_seconds": self.elapsed(), "optimizer": self.gather_optimizer(self.model, self.optimizer),
            "scheduler": self.schedule.state_dict(), "rng": rng_state(), "monitor": self.monitor.state_dict(), "threads": torch.get_num_threads(),
            # the optimiser and weights are the same in every process, RNG streams and thread counts are not
            "rng_by_rank": distributed.per_process(rng_state()), "threads_by_rank": distributed.per_process(torch.get_num_threads()),
        }

    def restore(self, folder: Path) -> None:
        state = load_state(folder)
        restore_weights(self.model, folder)
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["scheduler"])
        restore_rng(distributed.own_share(state.get("rng_by_rank"), state["rng"]) or state["rng"])
        threads = distributed.own_share(state.get("threads_by_rank"), state["threads"])
        if self.device.type == "cpu" and threads:
            torch.set_num_threads(threads)  # CPU sums split by thread count: the same count gives the same bits
        self.monitor.load_state_dict(state["monitor"])
        # run.json may lag the checkpoint by one write when the run was killed in between
        self._copy_best()
        self.step, self.tokens_seen, self.seconds_before = state["step"], state["tokens_seen"], state["train_seconds"]
        self.last_saved, self.started = self.step, time.perf_counter()
        self.history = truncate_metrics(self.run_dir / "metrics.jsonl", self.step)
        prune_checkpoints(self.run_dir, {self.step, self.monitor.best_step or self.step})
        console.print(f"resuming at step {self.step} of {self.plan.total_steps} from {folder}")

    def run(self) -> tuple[str, str | None]:
        """Train to the last step, or until early stopping or a budget says stop: (run status, why it stopped early)."""
        sharding.take_over(self)  # FSDP (accelerate config): shard now, after any checkpoint was restored unsharded
        zero.take_over(self)  # DeepSpeed (accelerate config): likewise, the restored optimiser state partitioned
        self.model.train()
        with (self.run_dir / "metrics.jsonl").open("a", encoding="utf-8") as self.metrics, progress() as self.bar, open_trackers(self.spec, self.run_dir) as self.tracker:
            self.task = self.bar.add_task("training", total=self.plan.total_steps, completed=self.step, info="")
            if self.step:
                self._log({"step": self.step, "event": "resumed"})
            while self.step < self.plan.total_steps:
                epoch = self.plan.epoch_of(self.step + 1)
                groups = self._groups(epoch)
                for index in range(self.step - (epoch - 1) * self.plan.steps_per_epoch, len(groups)):
                    outcome = self._train_step(epoch, groups, index)
                    if outcome is not None:
                        return outcome
                    if self.step >= self.plan.total_steps:
                        break
        return "completed", None

    def _groups(self, epoch: int) -> list[list[list[Encoded]]]:
        batches = self.layout.batches(self.items.for_epoch(self.cfg.seed, epoch), self.cfg, epoch, *distributed.rank_and_world())
        return [batches[i : i + self.cfg.grad_accum] for i in range(0, len(batches), self.cfg.grad_accum)]

    def _train_step(self, epoch: int, groups: list, index: int) -> tuple[str, str | None] | None:
        began, step, lr = time.perf_counter(), self.step + 1, self.optimizer.param_groups[0]["lr"]
        try:
            loss, grad_norm, n_trained, n_real = self.step_fn(
                self.model, groups[index], self.pad_id, self.device, self.params, self.optimizer, self.cfg.max_grad_norm,
                on_backward=lambda: test_kill("step", step), objective=self.objective,
            )
        except Diverged as exc:
            raise self._diverged(step, exc) from None
        self.schedule.step()
        self.step, self.tokens_seen = step, self.tokens_seen + n_real
        elapsed, position = self.elapsed(), round(epoch - 1 + (index + 1) / len(groups), 4)
        self._log({
            "step": step, "epoch": position, "loss": round(loss, 5), "lr": lr, "grad_norm": round(grad_norm, 4), "trained_tokens": n_trained,
            "tokens": n_real, "tokens_per_s": round(self.tokens_seen / max(elapsed, 1e-9), 1), "elapsed_s": round(elapsed, 1),
            "peak_mem_mb": peak_memory_mb(self.device),
        })
        self.monitor.add_train_loss(loss)
        self.bar.update(self.task, advance=1, info=f"epoch {epoch} loss {loss:.3f} {self.history[-1]['tokens_per_s']:.0f} tok/s")
        if step in self.plan.eval_steps:
            self._validate(position)
        elif step in self.plan.save_steps:
            self._checkpoint()
        for record in self.probes.run(self.model, self.tokenizer, step, position):
            self._log(record)
        return self._should_stop(time.perf_counter() - began)

    def _should_stop(self, step_seconds: float) -> tuple[str, str | None] | None:
        if self.step >= self.plan.total_steps:
            return None
        if self.monitor.should_stop():
            reason = f"early stopping: {self.monitor.since_best} validations without a better {self.objective.best_text(self.monitor)} (step {self.monitor.best_step})"
            self._event("early_stop", reason)
            return "completed", reason
        reason = self.budget.exceeded(self.elapsed(), step_seconds)
        if self.budget.limited:
            reason = distributed.share_from_main(reason)  # clocks differ per process; all must stop at the same step
        if reason is None:
            return None
        if self.last_saved != self.step:
            self._checkpoint()
        self._event("stopped", f"{reason}; continue with `tunesmith train --resume {self.run_dir.name}`")
        return "stopped", reason

    def _validate(self, position: float) -> None:
        """Validation now, logged before the checkpoint: a crash in between re-runs this validation on resume."""
        found = self.objective.validate(self.model, self.items.validation, self.pad_id, self.device, self.cfg.batch_size)
        warning = self.monitor.add_validation(self.step, position, found.get("val_loss"), *self.objective.score(found))
        self._log({"step": self.step, "epoch": position, **found})
        self.bar.update(self.task, info=f"epoch {math.ceil(position)} " + " ".join(f"{k} {v}" for k, v in found.items()))
        if warning:
            self._event("overfitting", warning)
        self._checkpoint()

    def _checkpoint(self) -> None:
        save_checkpoint(
            self.model, self.tokenizer, self.run_dir, self.step, self.info.end_of_turn_ids, self.state_dict(), self.objective.files,
            self.gather_weights(self.model),
        )
        self.last_saved = self.step
        self._copy_best()
        self.info.train_seconds = round(self.elapsed(), 1)
        save_run_info(self.run_dir, self.info)
        prune_checkpoints(self.run_dir, {self.step, self.monitor.best_step or self.step})

    def _copy_best(self) -> None:
        monitor, info = self.monitor, self.info
        info.best_step, info.best_epoch, info.best_val_loss, info.best_metrics = monitor.best_step, monitor.best_epoch, monitor.best_val_loss, monitor.best_metrics

    def _diverged(self, step: int, exc: Diverged) -> TrainingFailed:
        last = latest_checkpoint(self.run_dir)
        kept = f"the last good checkpoint is kept: {last}" if last is not None else "no checkpoint had been written yet"
        message = f"{exc} at step {step}; training stopped and {kept}"
        self._event("diverged", message)
        self.info.status, self.info.stop_reason = "failed", f"{exc} at step {step}"
        save_run_info(self.run_dir, self.info)
        return TrainingFailed(message, fix="lower train.lr (or train.lr_multiplier) or raise train.warmup_ratio, and start a new run")

    def _event(self, kind: str, message: str) -> None:
        console.print(f"[yellow]{message}")
        self._log({"step": self.step, "event": kind, "message": message})

    def _log(self, record: dict) -> None:
        self.history.append(record)
        self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()
        if self.tracker is not None:
            self.tracker.log(record)


def _optimizer_step(
    model, group, pad_id, device, params, optimizer, max_grad_norm, on_backward: Callable[[], None] | None = None, objective: Objective = CAUSAL_LM
) -> tuple[float, float, int, int]:
    """One optimiser step over a group of micro-batches, every trained token weighted equally.
    Returns (loss per trained token, gradient norm, trained tokens, real tokens); raises Diverged,
    before the weights are touched, when the loss or the gradient is not finite."""
    total_trained = sum(item.n_trained for batch in group for item in batch)
    total_loss, real_tokens = 0.0, 0
    for batch in group:
        real_tokens += sum(len(item.input_ids) for item in batch)
        for local in objective.tensors(batch, pad_id):
            loss_sum, _ = objective.summed_loss(model, {k: v.to(device) for k, v in local.items()})
            (loss_sum / total_trained).backward()
            total_loss += float(loss_sum.detach())
    if on_backward is not None:
        on_backward()
    distributed.sum_gradients(params)
    total_loss = distributed.global_sum(total_loss)
    grad_norm = clip_check_and_step(params, optimizer, max_grad_norm, total_loss)
    return total_loss / total_trained, grad_norm, total_trained, real_tokens


def clip_check_and_step(params: list, optimizer: Any, max_grad_norm: float, total_loss: float) -> float:
    """Clip, refuse a non-finite loss or gradient before the weights are touched, then step.
    Returns the gradient norm (a sharded model's, gathered)."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    if not math.isfinite(total_loss):
        raise Diverged(f"the training loss became {total_loss}")
    if not math.isfinite(grad_norm):
        raise Diverged(f"the gradient norm became {grad_norm}")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


@torch.no_grad()
def evaluate_loss(model, items: list[Encoded], pad_id: int, device, batch_size: int) -> float:
    model.eval()
    total, count = 0.0, 0
    ordered = sorted(items, key=lambda item: len(item.input_ids))
    for start in range(0, len(ordered), batch_size):
        tensors = {k: v.to(device) for k, v in collate(ordered[start : start + batch_size], pad_id).items()}
        loss_sum, n = summed_loss(model, tensors)
        total += float(loss_sum)
        count += n
    model.train()
    return round(total / max(1, count), 5)
