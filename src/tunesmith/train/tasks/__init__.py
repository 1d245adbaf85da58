"""The tasks a run can train, by `train.task`: what each means to the shared loop (an objective:
tensors, loss, validation, best) and its recipe from a dataset to an artefact. A new task registers here and gets the loop's checkpoints, resume, guards and budgets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tunesmith.errors import UserError
from tunesmith.train.tasks.causal_lm import estimate_causal_lm, train_causal_lm
from tunesmith.train.tasks.classification import estimate_classifier, train_classifier
from tunesmith.train.tasks.preference import estimate_preference, train_preference


@dataclass(frozen=True)
class Task:
    train: Callable[..., Any]  # (spec, dataset, replay, run_dir, base_path, budget, resume_from) -> loop.TrainResult
    estimate: Callable[..., Any]  # (spec, splits, dataset name) -> run.estimate.TrainEstimate, for --dry-run


TASKS: dict[str, Task] = {
    "causal_lm": Task(train=train_causal_lm, estimate=estimate_causal_lm),
    "classification": Task(train=train_classifier, estimate=estimate_classifier),
    "preference": Task(train=train_preference, estimate=estimate_preference),
}


def task_for(name: str) -> Task:
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}", where="train.task", fix=f"use one of: {', '.join(TASKS)}")
    return TASKS[name]
