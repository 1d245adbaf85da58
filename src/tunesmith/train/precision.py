"""AdamW that keeps float32 master copies of half-precision weights.

A bf16 weight holds 8 significant bits: an update smaller than half the gap to the next
representable value rounds away to nothing. Full fine-tuning at its usual learning rates
(1e-5 to 2e-5) makes updates of about lr per step, while a weight of 0.02 sits in a gap of
8e-5, so most bf16 weights never move: on the tests' tiny model, 10 steps at lr 2e-5 changed
3% of the bf16 weights and 100% of the fp32 ones. Transformers' Trainer and torchtune train
bf16-loaded models this way ("pure bf16"). Here the optimiser steps fp32 masters and writes
them back rounded, so small updates accumulate in the master until they show in the weight;
forward and backward stay in bf16.

Memory: 4 bytes more per trained weight for the master, and AdamW's moments in fp32 (as for
the master they update); the bf16 gradient is freed as soon as it is copied to fp32. Adapter
methods train few weights (PEFT keeps them in fp32 already), so this matters for `full`.
"""

from __future__ import annotations

from typing import Any

import torch

HALF = (torch.bfloat16, torch.float16)


def make_optimizer(params: list[torch.nn.Parameter], lr: float, weight_decay: float, masters: bool = True) -> torch.optim.Optimizer:
    """AdamW over `params`; over fp32 masters when some are half precision and `masters` (layouts that
    shard the optimiser, FSDP and DeepSpeed, keep their own fp32 state and pass False)."""
    if masters and any(p.dtype in HALF for p in params):
        return MasterWeightAdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


class MasterWeightAdamW(torch.optim.AdamW):
    """torch's AdamW stepping fp32 copies of the model's weights. The model's parameters keep
    their dtype and receive gradients as usual; `step` moves each gradient onto its master,
    steps the masters, and copies them back. Clipping happens before, on the model's gradients.
    The masters travel in `state_dict` (key "master_weights"), so a resumed run continues from
    the unrounded values, exactly as if it had not stopped."""

    def __init__(self, params: list[torch.nn.Parameter], **options: Any):
        weights = list(params)
        masters = [p.detach().float() if p.dtype in HALF else p for p in weights]
        super().__init__(masters, **options)
        self.weights = weights
        self.masters = masters
        self.halves = [(weight, master) for weight, master in zip(weights, masters) if master is not weight]  # (model's, fp32 copy)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        for weight, master in self.halves:
            master.grad = None if weight.grad is None else weight.grad.float()
            weight.grad = None
        loss = super().step(closure)
        for weight, master in self.halves:
            weight.copy_(master)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        for weight in self.weights:
            weight.grad = None

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["master_weights"] = [master.detach().clone() for _, master in self.halves]
        return state

    @torch.no_grad()
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        saved = state.pop("master_weights", None)
        if saved is None or len(saved) != len(self.halves):  # written without masters (fp32 weights, an older run)
            saved = [weight.float() for weight, _ in self.halves]
        for (_, master), value in zip(self.halves, saved):
            master.copy_(value)
        super().load_state_dict(state)
