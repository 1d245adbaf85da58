"""What stops or warns a run besides reaching its last step: time and cost budgets, a caller's
stop request (Control), early stopping, overfitting, peak memory for the logs."""

from __future__ import annotations

import math
import resource
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from tunesmith.errors import UserError


class Control:
    """A caller that steers a run from outside (the jobs service): told the run's id and folder as soon as
    they exist, and asked after every optimiser step whether to stop. A stop is a budget stop: the loop
    checkpoints and the run ends "stopped", so `resume` continues it. This base class never stops."""

    def on_start(self, run_id: str, run_dir: Path) -> None:
        """The run folder exists (a new run) or is about to be continued (a resumed one)."""

    def stop_requested(self) -> str | None:
        """Why to stop after this step (it ends up as the run's stop_reason), or None to go on."""
        return None


@dataclass(frozen=True)
class Budget:
    """Limits over the whole run, earlier sessions of a resumed run included. `control` rides along
    because it is asked at the same moment and stops the same way; it is not part of the limits."""

    max_seconds: float | None = None
    max_cost: float | None = None
    price_per_hour: float | None = None
    control: Control | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for name in ("max_seconds", "max_cost", "price_per_hour"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):  # NaN compares False with everything
                raise UserError(f"--{name.replace('_', '-').replace('seconds', 'time')} must be a finite number above 0 (got {value})")
        if self.max_cost is not None and self.price_per_hour is None:
            raise UserError("--max-cost needs --price-per-hour to turn time into money", fix="add e.g. --price-per-hour 2.5 (your machine's price)")

    @property
    def limited(self) -> bool:
        return self.max_seconds is not None or self.max_cost is not None

    def announce(self, run_id: str, run_dir: Path) -> None:
        if self.control is not None:
            self.control.on_start(run_id, run_dir)

    def requested_stop(self) -> str | None:
        return None if self.control is None else self.control.stop_requested()

    def exceeded(self, elapsed: float, last_step_seconds: float) -> str | None:
        """Why to stop now: another step like the last would end past a limit."""
        projected = elapsed + last_step_seconds
        if self.max_seconds is not None and projected > self.max_seconds:
            return f"--max-time {self.max_seconds:g} s reached ({elapsed:.1f} s used)"
        if self.max_cost is not None and self.price_per_hour and projected / 3600 * self.price_per_hour > self.max_cost:
            return f"--max-cost {self.max_cost:g} reached ({elapsed / 3600 * self.price_per_hour:.4f} spent at {self.price_per_hour:g}/hour)"
        return None


@dataclass
class Monitor:
    """The validation history: the best so far, evaluations since, and the overfitting pattern
    (validation loss above where it was 2 evaluations ago, both times, while the training loss falls). The best is the lowest
    validation loss unless validations come with a score (higher is better), as a classifier's do."""

    patience: int | None = None
    best_step: int | None = None
    best_epoch: float | None = None
    best_val_loss: float | None = None
    best_score: list[float] | None = None
    best_metrics: dict[str, float] | None = None
    since_best: int = 0
    evals: list[list[float]] = field(default_factory=list)  # [step, val_loss, mean training loss since the previous one]
    warned: bool = False
    train_sum: float = 0.0
    train_count: int = 0

    def add_train_loss(self, loss: float) -> None:
        self.train_sum += loss
        self.train_count += 1

    def add_validation(
        self, step: int, epoch: float, val_loss: float | None, score: list[float] | None = None, metrics: dict[str, float] | None = None
    ) -> str | None:
        """Record one validation; returns an overfitting warning when the pattern appears."""
        train_mean = self.train_sum / max(1, self.train_count)
        self.train_sum, self.train_count = 0.0, 0
        if score is not None:
            better = self.best_score is None or list(score) > self.best_score
        else:
            better = val_loss is None or self.best_val_loss is None or val_loss < self.best_val_loss
        if better:
            self.best_step, self.best_epoch, self.best_val_loss, self.since_best, self.warned = step, epoch, val_loss, 0, False
            self.best_score, self.best_metrics = (list(score) if score is not None else None), metrics
        else:
            self.since_best += 1
        if val_loss is None:
            return None
        self.evals.append([step, val_loss, train_mean])
        last = self.evals[-3:]
        # Both later validations above the first, not a strict rise: a small wobble back must not hide the pattern.
        rising = len(last) == 3 and last[0][1] < min(last[1][1], last[2][1])
        if rising and last[0][2] > last[1][2] > last[2][2] and not self.warned:
            self.warned = True
            return (
                f"overfitting: validation loss rose {last[0][1]:.4f} -> {last[2][1]:.4f} over the last 2 evaluations while training "
                f"loss fell {last[0][2]:.4f} -> {last[2][2]:.4f}; the best checkpoint (step {self.best_step}) is kept"
            )
        return None

    def should_stop(self) -> bool:
        return self.patience is not None and self.since_best >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def peak_memory_mb(device: torch.device) -> float:
    """CUDA's peak allocation on a GPU; the process's peak resident memory otherwise."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)
