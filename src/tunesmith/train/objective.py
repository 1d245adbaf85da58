"""What one kind of training means to the shared loop (trainer.TrainingLoop): how a micro-batch
becomes tensors and a summed loss, how validation is scored and which validation counts as best.
The loop owns everything else (schedule, checkpoints, resume, guards, budgets, early stopping), so
a new task gets all of that by giving these few things; classify.Classification is the other one."""

from __future__ import annotations

from typing import Any, Protocol

import torch

from tunesmith.train.collate import batch_tensors
from tunesmith.train.guards import Monitor
from tunesmith.train.loss import summed_loss


class Objective(Protocol):
    packs: bool  # whether examples may share a row (packing); a pooled head needs one example per row
    files: dict[str, str]  # written into every checkpoint, so the artefact copied from one carries them

    def tensors(self, batch: list, pad_id: int) -> list[dict[str, torch.Tensor]]: ...

    def summed_loss(self, model: Any, tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]: ...

    def validate(self, model: Any, items: list, pad_id: int, device: torch.device, batch_size: int) -> dict[str, Any]: ...

    def score(self, found: dict[str, Any]) -> tuple[list[float] | None, dict[str, float] | None]: ...

    def best_text(self, monitor: Monitor) -> str: ...


class CausalLM:
    """Token-level cross-entropy on the trained tokens; the best validation is the lowest loss."""

    packs = True
    files: dict[str, str] = {}

    def tensors(self, batch: list, pad_id: int) -> list[dict[str, torch.Tensor]]:
        return batch_tensors(batch, pad_id)

    def summed_loss(self, model: Any, tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        return summed_loss(model, tensors)

    def validate(self, model: Any, items: list, pad_id: int, device: torch.device, batch_size: int) -> dict[str, Any]:
        from tunesmith.train.trainer import evaluate_loss

        return {"val_loss": evaluate_loss(model, items, pad_id, device, batch_size) if items else None}

    def score(self, found: dict[str, Any]) -> tuple[list[float] | None, dict[str, float] | None]:
        return None, None  # the Monitor's own rule: lower validation loss is better

    def best_text(self, monitor: Monitor) -> str:
        return f"loss than {monitor.best_val_loss}"


CAUSAL_LM = CausalLM()
