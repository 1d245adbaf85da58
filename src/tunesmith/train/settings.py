"""From the config to concrete numbers: 'auto' and per-method defaults resolved, the step plan,
the learning-rate schedule, and the replay examples of each epoch."""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass

import torch

from tunesmith.config import DEFAULT_LR, TrainSpec


def _power_of_two_at_most(value: int) -> int:
    return 1 << (max(1, value).bit_length() - 1)


def resolve_settings(cfg: TrainSpec, n_examples: int, device: torch.device) -> tuple[TrainSpec, dict[str, str]]:
    """The same TrainSpec with every 'auto' and default replaced by a number, and a note per resolved field
    (the rule is config.AUTO_RULE; keep the two in step)."""
    notes: dict[str, str] = {}
    batch_size = cfg.batch_size
    if batch_size == "auto":
        gib = torch.cuda.get_device_properties(device).total_memory / 2**30 if device.type == "cuda" else 0.0
        batch_size = min(max(1, n_examples), 4 if device.type != "cuda" else (16 if gib >= 40 else 8))
        notes["batch_size"] = f"auto: {batch_size} on {device.type}" + (f" with {gib:.0f} GiB" if gib else "")
    grad_accum = cfg.grad_accum
    if grad_accum == "auto":
        target = _power_of_two_at_most(min(32, max(4, n_examples // 100)))
        grad_accum = max(1, target // batch_size)
        notes["grad_accum"] = f"auto: effective batch {batch_size * grad_accum} for {n_examples} examples"
    epochs = cfg.epochs
    if epochs == "auto":
        epochs = min(5, max(1, math.ceil(1000 / max(1, n_examples))))
        notes["epochs"] = f"auto: ceil(1000 / {n_examples} examples) clamped to 1..5"
    lr = cfg.lr
    default = DEFAULT_LR[cfg.method]
    if lr == "auto":
        lr = default * math.sqrt(batch_size * grad_accum / 8)
        notes["lr"] = f"auto: {cfg.method} default {default:g} x sqrt(effective batch {batch_size * grad_accum} / 8)"
    elif lr is None:
        lr = default * (cfg.lr_multiplier or 1.0)
        notes["lr"] = f"{cfg.method} default {default:g}" + (f" x lr_multiplier {cfg.lr_multiplier:g}" if cfg.lr_multiplier else "")
    resolved = cfg.model_copy(update={"epochs": epochs, "batch_size": batch_size, "grad_accum": grad_accum, "lr": lr, "lr_multiplier": None})
    return resolved, notes


@dataclass(frozen=True)
class Plan:
    """Where the run's steps go. Batches are a pure function of (seed, epoch), so a step number alone
    says where inside which epoch a run is."""

    steps_per_epoch: int
    total_steps: int
    epochs: int
    eval_steps: frozenset[int]
    save_steps: frozenset[int]

    def epoch_of(self, step: int) -> int:
        """The epoch that optimiser step `step` (1-based) belongs to."""
        return (step - 1) // self.steps_per_epoch + 1


def plan_steps(cfg: TrainSpec, n_items: int) -> Plan:
    per_epoch = math.ceil(math.ceil(n_items / cfg.batch_size) / cfg.grad_accum)
    total = cfg.max_steps or per_epoch * cfg.epochs
    epochs = math.ceil(total / per_epoch)
    # Validation points spread evenly over each epoch; one always ends the epoch, and one ends the run.
    evals = {e * per_epoch - (k * per_epoch) // cfg.evals_per_epoch for e in range(1, epochs + 1) for k in range(cfg.evals_per_epoch)}
    evals = {s for s in evals if s <= total} | {total}
    saves = set(range(cfg.save_every_steps, total + 1, cfg.save_every_steps)) if cfg.save_every_steps else set()
    return Plan(per_epoch, total, epochs, frozenset(evals), frozenset(saves))


# Hand-written, not transformers.get_scheduler, measured (transformers 5.25): its warm-up starts at
# step/warmup, so the first optimiser step runs at lr 0 (a wasted step; ours runs at 1/warmup),
# and its linear decay (total - step) / (total - warmup) rounds differently from ours: against
# this function, 3 of 30 per-step rates differ for constant and cosine with 3 warm-up steps, 14
# of 30 for linear (428 of 1000 with 30 warm-up steps), so every run's loss curve, the resume and
# accumulation tests' exact losses and test_schedulers' values would change.
def _lr_factor(kind: str, warmup: int, total: int, step: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return max(0.0, 1.0 - progress)


def make_schedule(optimizer: torch.optim.Optimizer, cfg: TrainSpec, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = int(total_steps * cfg.warmup_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(_lr_factor, cfg.scheduler, warmup, total_steps))


def replay_count(n_train: int, fraction: float) -> int:
    """Replay examples per epoch so that they are `fraction` of the epoch's examples."""
    return round(n_train * fraction / (1.0 - fraction))


def replay_sample(pool: list, count: int, seed: int, epoch: int) -> list:
    """A fresh seeded draw per epoch, cycling through the pool when it is smaller than the count."""
    if not pool or count <= 0:
        return []
    rng = random.Random(seed * 1_000_003 + epoch + 7_919)
    drawn: list = []
    while len(drawn) < count:
        order = list(pool)
        rng.shuffle(order)
        drawn.extend(order[: count - len(drawn)])
    return drawn


def replay_draws(pools: list[tuple[list, int]], seed: int, epoch: int) -> list:
    """One epoch's draws from each (pool, count): each pool has its own seeded stream, so adding a pool
    leaves the others' draws as they were."""
    return [item for i, (pool, count) in enumerate(pools) for item in replay_sample(pool, count, seed + 7_777 * i, epoch)]
