"""What a training run will cost before it starts, measured rather than guessed.

Tokens and optimiser steps are counted on the user's own examples exactly as the trainer will
see them (chat template, truncation, dropped examples). Wall time is extrapolated by token
count from a few real optimiser steps timed on this machine, on batches drawn from the run's
own schedule; peak memory is measured during those steps; the cost is time x hourly price.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel

from tunesmith.chat_template import Encoded
from tunesmith.config import TrainSpec
from tunesmith.train import kernels
from tunesmith.train.layout import plan_layout
from tunesmith.train.objective import Objective
from tunesmith.train.parallel.strategy import Plain
from tunesmith.train.precision import make_optimizer
from tunesmith.train.settings import plan_steps
from tunesmith.train.step import Diverged, optimizer_step
from tunesmith.ui import console, out

# Warm-up steps, then timed optimiser steps: enough to average shapes, few enough that the
# estimate costs a few percent of a run. More than one warm-up: on CPU the first steps of a
# fresh process were often several times slower than later ones (tiny model: 173, 134, 150,
# 144, then 1,206-2,559 tokens/s). Short steps are timed until MIN_CALIBRATION_SECONDS have
# passed, as one scheduler hiccup would otherwise dominate.
WARMUP_STEPS = 3
CALIBRATION_STEPS = 3
MIN_CALIBRATION_SECONDS = 2.0
MAX_CALIBRATION_STEPS = 30


class TrainEstimate(BaseModel):
    """estimate.json in the run folder, and the table `train --dry-run` prints."""

    examples: int
    dropped_examples: int
    epochs: int
    tokens_per_epoch: int  # real tokens the model reads per epoch, after the chat template and truncation
    trained_tokens_per_epoch: int  # those that carry loss
    steps_per_epoch: int
    total_steps: int
    validations: int
    validation_tokens: int  # per validation pass
    calibration_steps: int
    seconds_per_token: float
    validation_seconds_per_token: float | None
    train_seconds: float
    validation_seconds: float
    total_seconds: float
    peak_memory_bytes: int
    memory_measure: str
    device: str
    price_per_hour: float | None = None
    cost: float | None = None


class _PeakMemory:
    """Peak memory while the block runs: the CUDA allocator's own peak on GPU; on CPU the
    process's resident set, sampled, because the allocator there keeps no peak."""

    def __init__(self, device: torch.device):
        self.device, self.peak, self._stop = device, 0, threading.Event()

    def __enter__(self) -> _PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            import psutil

            process = psutil.Process()
            self.peak = process.memory_info().rss

            def sample() -> None:
                while not self._stop.wait(0.02):
                    self.peak = max(self.peak, process.memory_info().rss)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = int(torch.cuda.max_memory_allocated(self.device))
        else:
            self._stop.set()
            self._thread.join()

    @property
    def measure(self) -> str:
        return "torch.cuda.max_memory_allocated" if self.device.type == "cuda" else "process RSS"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step(model: Any, group: list[list[Encoded]], pad_id: int, device: torch.device, params: list, optimizer: Any, max_grad_norm: float, objective: Any) -> int:
    """The compute of one training step (the run's own optimizer_step, kept to this process); returns the real tokens read."""
    try:
        _, _, _, tokens = optimizer_step(model, group, pad_id, device, params, optimizer, max_grad_norm, objective, Plain(across_processes=False))
    except Diverged:  # timing only: training itself reports a diverging run, with its step
        optimizer.zero_grad(set_to_none=True)
        tokens = sum(len(item.input_ids) for batch in group for item in batch)
    _sync(device)
    return tokens


def _representative(groups: list[list[list[Encoded]]], k: int) -> list[list[list[Encoded]]]:
    """k step-groups at evenly spaced quantiles of token count, so short and long batches both count."""
    ordered = sorted(groups, key=lambda g: sum(len(i.input_ids) for b in g for i in b))
    return [ordered[min(len(ordered) - 1, (len(ordered) * (q + 1)) // (k + 1))] for q in range(k)]


def calibrate(
    model: Any, tokenizer: Any, device: torch.device, cfg: TrainSpec, train_items: list[Encoded], val_items: list[Encoded], objective: Objective
) -> dict[str, Any]:
    """Seconds per token of training and of validation, and the peak memory, from real steps.

    The optimiser runs with learning rate 0 and the random state is restored afterwards, so
    the run that follows starts from exactly the weights and seed it would have without this."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # The run's own layout and kernels (packing, per-example attention, fused LoRA), so the
    # calibration times what the run will do.
    kernels.switch_on(model, device)
    batches = plan_layout(model, cfg, train_items, device, objective.packs).batches(train_items, cfg, epoch=1)
    groups = [batches[i : i + cfg.grad_accum] for i in range(0, len(batches), cfg.grad_accum)]
    # The widest group warms up first: its allocations are the run's peak, measured below.
    warm = [max(groups, key=lambda g: sum(len(b) * max(len(i.input_ids) for i in b) for b in g)), *groups[: WARMUP_STEPS - 1]]
    timed = _representative(groups, CALIBRATION_STEPS) + _representative(groups, MAX_CALIBRATION_STEPS - CALIBRATION_STEPS)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, 0.0, cfg.weight_decay)  # the run's own kind, so the memory measured is the run's
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if device.type == "cuda" else None
    was_training = model.training
    model.train()
    try:
        with _PeakMemory(device) as memory:
            for group in warm:
                _step(model, group, pad_id, device, params, optimizer, cfg.max_grad_norm, objective)
            started, tokens, n_timed = time.perf_counter(), 0, 0
            for group in timed:
                if n_timed >= CALIBRATION_STEPS and time.perf_counter() - started >= MIN_CALIBRATION_SECONDS:
                    break
                tokens += _step(model, group, pad_id, device, params, optimizer, cfg.max_grad_norm, objective)
                n_timed += 1
            train_spt = (time.perf_counter() - started) / max(1, tokens)
            val_spt = _validation_seconds_per_token(model, val_items, pad_id, device, cfg.batch_size, objective)
    finally:
        del optimizer
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        model.train(was_training)
    return {
        "seconds_per_token": train_spt,
        "validation_seconds_per_token": val_spt,
        "calibration_steps": n_timed,
        "peak_memory_bytes": memory.peak,
        "memory_measure": memory.measure,
    }


@torch.no_grad()
def _validation_seconds_per_token(
    model: Any, val_items: list[Encoded], pad_id: int, device: torch.device, batch_size: int, objective: Objective
) -> float | None:
    if not val_items:
        return None
    ordered = sorted(val_items, key=lambda item: len(item.input_ids))
    middle = max(0, len(ordered) // 2 - batch_size // 2)
    (batch,) = objective.tensors(ordered[middle : middle + batch_size], pad_id)
    tensors = {k: v.to(device) for k, v in batch.items()}
    model.eval()
    started, passes = time.perf_counter(), 0
    while passes < 10 and (passes == 0 or time.perf_counter() - started < MIN_CALIBRATION_SECONDS / 4):
        objective.summed_loss(model, tensors)
        _sync(device)
        passes += 1
    return (time.perf_counter() - started) / passes / max(1, int(tensors["attention_mask"].sum()))


def estimate_training(
    model: Any,
    tokenizer: Any,
    device: torch.device,
    cfg: TrainSpec,
    train_items: list[Encoded],
    val_items: list[Encoded],
    dropped: int = 0,
    *,
    objective: Objective,
) -> TrainEstimate:
    plan = plan_steps(cfg, len(train_items))  # the trainer's own plan: max_steps, epochs and validation points
    measured = calibrate(model, tokenizer, device, cfg, train_items, val_items, objective)
    tokens = sum(len(i.input_ids) for i in train_items)
    val_tokens = sum(len(i.input_ids) for i in val_items)
    validations = len(plan.eval_steps)
    train_seconds = tokens * (plan.total_steps / plan.steps_per_epoch) * measured["seconds_per_token"]
    val_seconds = val_tokens * validations * (measured["validation_seconds_per_token"] or 0.0)
    total = train_seconds + val_seconds
    return TrainEstimate(
        examples=len(train_items),
        dropped_examples=dropped,
        epochs=plan.epochs,
        tokens_per_epoch=tokens,
        trained_tokens_per_epoch=sum(i.n_trained for i in train_items),
        steps_per_epoch=plan.steps_per_epoch,
        total_steps=plan.total_steps,
        validations=validations,
        validation_tokens=val_tokens,
        **measured,
        train_seconds=round(train_seconds, 1),
        validation_seconds=round(val_seconds, 1),
        total_seconds=round(total, 1),
        device=str(device),
        price_per_hour=cfg.price_per_hour,
        cost=round(total / 3600 * cfg.price_per_hour, 4) if cfg.price_per_hour is not None else None,
    )


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def print_estimate(estimate: TrainEstimate, run_dir: Path | None = None) -> None:
    """The table: on stdout for a dry run; in a run, on stderr with the progress (stdout ends with the
    run id for scripts) and as estimate.json in the run folder, to compare with what the run took."""
    from rich.table import Table

    e = estimate
    table = Table(title="training estimate (measured on this machine)", show_header=False)
    table.add_row("examples", f"{e.examples:,}" + (f" ({e.dropped_examples} dropped: nothing to learn after truncation)" if e.dropped_examples else ""))
    table.add_row("tokens per epoch", f"{e.tokens_per_epoch:,} ({e.trained_tokens_per_epoch:,} trained)")
    table.add_row("optimizer steps", f"{e.total_steps:,} ({e.steps_per_epoch:,} per epoch x {e.epochs} epochs)")
    table.add_row("validation", f"{e.validations} pass(es) over {e.validation_tokens:,} tokens")
    table.add_row(
        "throughput", f"{1 / e.seconds_per_token:,.0f} tokens/s training on {e.device} ({e.calibration_steps} timed steps after {WARMUP_STEPS} warm-up steps)"
    )
    table.add_row(
        "estimated time",
        f"{duration(e.total_seconds)} ({duration(e.train_seconds)} training, {duration(e.validation_seconds)} validation; model loading and checkpoints not included)",
    )
    table.add_row("peak memory", f"{e.peak_memory_bytes / 2**30:.2f} GiB ({e.memory_measure})")
    table.add_row("estimated cost", f"{e.cost:,.2f} at {e.price_per_hour:g} per hour" if e.cost is not None else "give --price-per-hour to see it")
    (out if run_dir is None else console).print(table)
    if run_dir is not None:
        (run_dir / "estimate.json").write_text(json.dumps(estimate.model_dump(), indent=2) + "\n", encoding="utf-8")
