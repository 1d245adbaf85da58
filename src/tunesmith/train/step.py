"""One optimiser step, the only one: the plain loop, FSDP, DeepSpeed ZeRO and the pre-training
estimate all run this function; a parallel strategy (parallel/strategy.py) supplies only what
differs between layouts: which forward passes to run, how a pass's loss is scaled and
back-propagated, how gradients and the loss are summed across processes, and the update.

Every trained token of the step weighs the same: each pass's summed token loss is divided by the
trained tokens of the whole step (all micro-batches, all processes), so gradient accumulation and
N processes train what one large batch would."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

import torch


class Diverged(ArithmeticError):
    """The loss or the gradient norm stopped being a finite number."""


class StepStrategy(Protocol):
    """What a layout decides inside a step; parallel.strategy.Plain is the single-process one."""

    def passes(self, group: list, objective: Any, pad_id: int, device: torch.device) -> list[dict[str, torch.Tensor]]: ...

    def backward(self, loss_sum: torch.Tensor, step_tokens: int, last: bool) -> None: ...

    def reduce(self, params: list, total_loss: float, device: torch.device) -> float: ...

    def update(self, params: list, optimizer: Any, max_grad_norm: float) -> float: ...


def optimizer_step(
    model: Any,
    group: list,
    pad_id: int,
    device: torch.device,
    params: list,
    optimizer: Any,
    max_grad_norm: float,
    objective: Any,
    strategy: StepStrategy,
    on_backward: Callable[[], None] | None = None,
) -> tuple[float, float, int, int]:
    """One optimiser step over a group of micro-batches. Returns (loss per trained token, gradient
    norm, trained tokens, real tokens); raises Diverged, before the weights are touched, when the
    loss or the gradient is not finite."""
    total_trained = sum(item.n_trained for batch in group for item in batch)
    real_tokens = sum(len(item.input_ids) for batch in group for item in batch)
    passes = strategy.passes(group, objective, pad_id, device)
    total_loss = 0.0
    for number, local in enumerate(passes, start=1):
        loss_sum, _ = objective.summed_loss(model, {k: v.to(device) for k, v in local.items()})
        strategy.backward(loss_sum, total_trained, last=number == len(passes))
        total_loss += float(loss_sum.detach())
    if on_backward is not None:
        on_backward()
    total_loss = strategy.reduce(params, total_loss, device)
    if not math.isfinite(total_loss):
        raise Diverged(f"the training loss became {total_loss}")
    grad_norm = strategy.update(params, optimizer, max_grad_norm)
    return total_loss / total_trained, grad_norm, total_trained, real_tokens


def clip_and_step(params: list, optimizer: Any, max_grad_norm: float) -> float:
    """Clip, refuse a non-finite gradient before the weights are touched, step, and zero the
    gradients. Returns the gradient norm (a sharded model's, gathered)."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    if not math.isfinite(grad_norm):
        raise Diverged(f"the gradient norm became {grad_norm}")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm
