"""What a task means to the shared loop and the one optimiser step: how a micro-batch becomes
tensors and a summed loss, how validation is scored and which validation is best. tasks/ holds
the implementations (causal LM, classification); the loop and the step know only this."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import torch

if TYPE_CHECKING:  # the Monitor is the loop's; a task only reads it
    from tunesmith.train.run.guards import Monitor


class Objective(Protocol):
    packs: bool  # whether examples may share a row (packing); a pooled head needs one example per row
    files: dict[str, str]  # written into every checkpoint, so the artefact copied from one carries them

    def tensors(self, batch: list, pad_id: int) -> list[dict[str, torch.Tensor]]: ...

    def summed_loss(self, model: Any, tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]: ...

    def validate(self, model: Any, items: list, pad_id: int, device: torch.device, batch_size: int) -> dict[str, Any]: ...

    def score(self, found: dict[str, Any]) -> tuple[list[float] | None, dict[str, float] | None]: ...

    def best_text(self, monitor: Monitor) -> str: ...
