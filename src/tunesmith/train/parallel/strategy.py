"""How the loop's optimiser step is laid out across processes, chosen once from how the run was
launched and handed to the loop: `Plain` (one process, or plain data parallel under torchrun /
accelerate's multi-CPU or multi-GPU launch), `FSDP` (fsdp.py) or `Zero` (zero.py, DeepSpeed).

A strategy prepares the model and optimiser (sharding or wrapping them, after any checkpoint was
restored unsharded), supplies the parts of step.optimizer_step that differ between layouts, and
gathers the optimiser state and weights a checkpoint saves, so that a checkpoint resumes in any
layout."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from tunesmith.train.parallel import accel, distributed
from tunesmith.train.parallel.fsdp import equal_passes, full_weights, optimizer_state, shard_for_training
from tunesmith.train.parallel.zero import Zero
from tunesmith.train.step import clip_and_step


class Plain:
    """Whole model and optimiser in each process; gradients summed across processes when several."""

    name = "plain"

    def __init__(self, across_processes: bool = True):
        self.across_processes = across_processes  # False: this process alone (the estimate's timing steps)

    def prepare(self, model: Any, optimizer: Any, schedule: Any, params: list, cfg: Any, total_steps: int) -> tuple[Any, Any, Any, list]:
        return model, optimizer, schedule, params

    def passes(self, group: list, objective: Any, pad_id: int, device: Any) -> list[dict[str, torch.Tensor]]:
        return [local for batch in group for local in objective.tensors(batch, pad_id)]

    def backward(self, loss_sum: torch.Tensor, step_tokens: int, last: bool) -> None:
        (loss_sum / step_tokens).backward()

    def reduce(self, params: list, total_loss: float, device: Any) -> float:
        if not self.across_processes:
            return total_loss
        distributed.sum_gradients(params)
        return distributed.global_sum(total_loss)

    def update(self, params: list, optimizer: Any, max_grad_norm: float) -> float:
        return clip_and_step(params, optimizer, max_grad_norm)

    def optimizer_state(self, model: Any, optimizer: Any, params: list) -> dict[str, Any]:
        # a model sharded outside the loop (a test, say) still saves unsharded state
        return optimizer_state(model, optimizer)

    def full_weights(self, model: Any) -> dict[str, torch.Tensor] | None:
        return full_weights(model)


class FSDP(Plain):
    """The FSDP2 layout (fsdp.py): each process runs as many forward passes as the busiest one,
    since FSDP gathers weights in every pass."""

    name = "fsdp"

    def prepare(self, model: Any, optimizer: Any, schedule: Any, params: list, cfg: Any, total_steps: int) -> tuple[Any, Any, Any, list]:
        return shard_for_training(model, optimizer, schedule, params, cfg, total_steps)

    def passes(self, group: list, objective: Any, pad_id: int, device: Any) -> list[dict[str, torch.Tensor]]:
        return equal_passes(group, objective, pad_id, device)

    def backward(self, loss_sum: torch.Tensor, step_tokens: int, last: bool) -> None:
        # FSDP averages the gradients over processes; ours are shares of one sum, so scale them up first
        # (setting FSDP's divide factor to 1 instead needs PREMUL_SUM, which gloo lacks).
        (loss_sum * (dist.get_world_size() / step_tokens)).backward()

    def reduce(self, params: list, total_loss: float, device: Any) -> float:
        return distributed.global_sum(total_loss, device)


def for_launch() -> Plain | FSDP | Zero:
    """The strategy the launcher asked for: an accelerate FSDP or DeepSpeed config with several
    processes, else Plain."""
    mode, world = accel.mode_from_env(), distributed.rank_and_world()[1]
    if world > 1 and mode == "fsdp":
        return FSDP()
    if world > 1 and mode == "deepspeed":
        return Zero()
    return Plain()
