"""The training loop every task and layout shares: steps, validation, checkpoints, budgets,
early stopping, probes and the metrics log. Every checkpoint can be resumed (`train --resume RUN`,
see resume.py) and the resumed run is step for step the run that was never interrupted: batches
are a pure function of seed and epoch, and the checkpoint holds the optimiser, the schedule, the
RNGs and the step."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tunesmith.chat_template import Encoded
from tunesmith.config import RunSpec, TrainSpec
from tunesmith.errors import TrainingFailed
from tunesmith.models.methods import artefact_kind
from tunesmith.plot import plot_loss
from tunesmith.registry.runfolder import RunInfo, load_run_info, name_base_model, replace_folder, save_run_info
from tunesmith.train.continued import lineage
from tunesmith.train.layout import plan_layout
from tunesmith.train.objective import Objective
from tunesmith.train.parallel import distributed
from tunesmith.train.precision import make_optimizer
from tunesmith.train.run.checkpoint import (
    STATE_FILE,
    checkpoint_dir,
    latest_checkpoint,
    load_state,
    prune_checkpoints,
    restore_rng,
    restore_weights,
    rng_state,
    save_checkpoint,
    test_kill,
    truncate_metrics,
)
from tunesmith.train.run.guards import Budget, Monitor, peak_memory_mb
from tunesmith.train.run.probes import Probes
from tunesmith.train.run.tracking import open_trackers
from tunesmith.train.settings import make_schedule, plan_steps, replay_draws
from tunesmith.train.step import Diverged, StepStrategy, optimizer_step
from tunesmith.ui import console, progress


@dataclass
class TrainResult:
    """A training's outcome: its folder, its run.json (status, best step, best_val_loss, best_metrics) and
    the metrics of each validation."""

    run_dir: Path
    info: RunInfo
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return self.info.run_id

    @property
    def status(self) -> str:
        """completed, or stopped (a budget ran out; `tunesmith.resume` continues it)."""
        return self.info.status

    @property
    def best_metrics(self) -> dict[str, float]:
        """The kept checkpoint's validation scores: val_loss, and a classifier's accuracy and f1_macro."""
        found = {} if self.info.best_val_loss is None else {"val_loss": self.info.best_val_loss}
        return {**found, **(self.info.best_metrics or {})}


@dataclass
class Replay:
    """Examples mixed into every epoch besides the task's (data.replay, data.keep_general): `fraction`
    of the epoch's examples, drawn afresh each epoch from `examples` (Examples, then Encoded)."""

    name: str
    examples: list
    fraction: float
    per_epoch: int = 0


@dataclass
class Items:
    """Encoded examples; the replay draws differ per epoch but not per process."""

    train: list[Encoded]
    validation: list[Encoded]
    dropped: list[str]
    replay: list[Replay] = field(default_factory=list)

    @property
    def replay_per_epoch(self) -> int:
        return sum(pool.per_epoch for pool in self.replay)

    def for_epoch(self, seed: int, epoch: int) -> list[Encoded]:
        return self.train + replay_draws([(pool.examples, pool.per_epoch) for pool in self.replay], seed, epoch)


def open_run_info(run_dir: Path, spec: RunSpec, dataset: Any, base_path: str, *, resuming: bool = False, **fields: Any) -> RunInfo:
    """run.json marked running and saved: the run's own when resuming, else a new one from the spec
    and the dataset; `fields` are what only the task knows (end-of-turn ids, dropped examples, labels)."""
    info = (
        load_run_info(run_dir)
        if resuming
        else RunInfo(
            run_id=run_dir.name,
            status="running",
            base_model=spec.model.name,
            base_model_path=base_path,
            method=spec.train.method,
            artefact=artefact_kind(spec.train.method),
            dataset=dataset.name,
            dataset_version=dataset.version,
            task=spec.train.task,
            **{"end_of_turn_ids": [], **lineage(spec), **fields},
        )
    )
    info.status, info.stop_reason = "running", None
    save_run_info(run_dir, info)
    return info


def run_interruptible(loop: TrainingLoop) -> tuple[str, str | None]:
    """Ctrl-C leaves a run marked stopped with the command that continues it."""
    try:
        return loop.run()
    except KeyboardInterrupt:
        info = loop.info
        info.status, info.stop_reason = "stopped", f"interrupted; `tunesmith train --resume {info.run_id}` continues from step {loop.last_saved or 0}"
        save_run_info(loop.run_dir, info)
        console.print(f"[yellow]{info.stop_reason}")
        raise


def finish(loop: TrainingLoop, status: str, reason: str | None) -> TrainResult:
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
    The objective says what a batch's loss and a validation are (tasks/); the strategy how a step is
    laid out across processes (parallel/strategy.py)."""

    def __init__(
        self,
        model,
        tokenizer,
        device,
        cfg: TrainSpec,
        items: Items,
        run_dir: Path,
        info: RunInfo,
        budget: Budget | None,
        spec: RunSpec,
        *,
        objective: Objective,
        strategy: StepStrategy,
        probes: Probes | None = None,
    ):
        self.model, self.tokenizer, self.device, self.cfg, self.items = model, tokenizer, device, cfg, items
        self.objective, self.strategy = objective, strategy
        self.run_dir, self.info, self.budget = run_dir, info, budget or Budget()
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.params = [p for p in model.parameters() if p.requires_grad]
        distributed.same_start(self.params)
        self.optimizer = make_optimizer(self.params, cfg.lr, cfg.weight_decay, masters=strategy.name == "plain")
        self.plan = plan_steps(cfg, len(items.train) + items.replay_per_epoch)
        self.schedule = make_schedule(self.optimizer, cfg, self.plan.total_steps)
        self.monitor = Monitor(cfg.early_stopping_patience)
        self.step, self.tokens_seen, self.seconds_before = 0, 0, 0.0
        self.last_saved: int | None = None
        self.history: list[dict] = []
        self.started = time.perf_counter()
        self.spec, self.probes, self.tracker = spec, probes or Probes([]), None
        self.layout = plan_layout(model, cfg, items.train, device, objective.packs)
        console.print(self.layout.describe())

    def elapsed(self) -> float:
        """Training seconds over the whole run, earlier sessions included."""
        return self.seconds_before + time.perf_counter() - self.started

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "epoch": self.plan.epoch_of(self.step),
            "position": self.step - (self.plan.epoch_of(self.step) - 1) * self.plan.steps_per_epoch,
            "tokens_seen": self.tokens_seen,
            "train_seconds": self.elapsed(),
            "optimizer": self.strategy.optimizer_state(self.model, self.optimizer, self.params),
            "scheduler": self.schedule.state_dict(),
            "rng": rng_state(),
            "monitor": self.monitor.state_dict(),
            "threads": torch.get_num_threads(),
            # the optimiser and weights are the same in every process, RNG streams and thread counts are not
            "rng_by_rank": distributed.per_process(rng_state()),
            "threads_by_rank": distributed.per_process(torch.get_num_threads()),
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
        # FSDP shards and DeepSpeed partitions now, after any checkpoint was restored unsharded
        self.model, self.optimizer, self.schedule, self.params = self.strategy.prepare(
            self.model, self.optimizer, self.schedule, self.params, self.cfg, self.plan.total_steps
        )
        self.model.train()
        with (
            (self.run_dir / "metrics.jsonl").open("a", encoding="utf-8") as self.metrics,
            progress() as self.bar,
            open_trackers(self.spec, self.run_dir) as self.tracker,
        ):
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
            loss, grad_norm, n_trained, n_real = optimizer_step(
                self.model,
                groups[index],
                self.pad_id,
                self.device,
                self.params,
                self.optimizer,
                self.cfg.max_grad_norm,
                self.objective,
                self.strategy,
                on_backward=lambda: test_kill("step", step),
            )
        except Diverged as exc:
            raise self._diverged(step, exc) from None
        self.schedule.step()
        self.step, self.tokens_seen = step, self.tokens_seen + n_real
        elapsed, position = self.elapsed(), round(epoch - 1 + (index + 1) / len(groups), 4)
        self._log(
            {
                "step": step,
                "epoch": position,
                "loss": round(loss, 5),
                "lr": lr,
                "grad_norm": round(grad_norm, 4),
                "trained_tokens": n_trained,
                "tokens": n_real,
                "tokens_per_s": round(self.tokens_seen / max(elapsed, 1e-9), 1),
                "elapsed_s": round(elapsed, 1),
                "peak_mem_mb": peak_memory_mb(self.device),
            }
        )
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
        # a caller's control steers single-process runs only (the jobs service); launched processes get flags
        reason = reason or self.budget.requested_stop()
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
            self.model,
            self.tokenizer,
            self.run_dir,
            self.step,
            self.info.end_of_turn_ids,
            self.state_dict(),
            self.objective.files,
            self.strategy.full_weights(self.model),
        )
        self.last_saved = self.step
        self._copy_best()
        self.info.train_seconds = round(self.elapsed(), 1)
        save_run_info(self.run_dir, self.info)
        prune_checkpoints(self.run_dir, {self.step, self.monitor.best_step or self.step})

    def _copy_best(self) -> None:
        monitor, info = self.monitor, self.info
        info.best_step, info.best_epoch, info.best_val_loss, info.best_metrics = (
            monitor.best_step,
            monitor.best_epoch,
            monitor.best_val_loss,
            monitor.best_metrics,
        )

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
