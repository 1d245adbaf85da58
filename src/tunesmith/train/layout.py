"""How a run lays its examples out into forward passes, decided once and shared by the
calibration that estimates the run and the run itself, so the estimate times what will run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tunesmith.chat_template import Encoded
from tunesmith.config import TrainSpec
from tunesmith.models.methods import method_for
from tunesmith.train.batching import Batch, choose_packing, make_batches, tokens_per_forward
from tunesmith.train.kernels.segments import use_segment_attention


@dataclass(frozen=True)
class Layout:
    packed: bool
    flat: bool  # packed as flat rows with per-example attention
    max_tokens: int | None  # tokens of one forward pass
    waste: float  # padding share length-grouped batches would have

    def describe(self) -> str:
        kind = ("packed, per-example attention" if self.flat else "packed") if self.packed else "length-grouped"
        return f"batches {kind} (length-grouped padding would be {self.waste:.0%} of tokens)"

    def batches(self, items: list[Encoded], cfg: TrainSpec, epoch: int, rank: int = 0, world: int = 1) -> list[Batch]:
        return make_batches(items, cfg.batch_size, cfg.seed, epoch, self.packed, cfg.max_seq_len, rank, world, self.max_tokens, self.flat)


def plan_layout(model: Any, cfg: TrainSpec, items: list[Encoded], device: torch.device, packs: bool = True) -> Layout:
    """Decide packing; flat rows switch the model's attention to per-example segments (idempotent)."""
    # Virtual tokens sit before each row, not before each packed example: those methods never pack.
    setting = False if method_for(cfg.method).virtual_tokens or not packs else cfg.packing
    packed, waste = choose_packing(setting, items, cfg.batch_size, cfg.seed)
    # Under auto, flat rows win over any padding at all: they cost neither padding nor attention across examples.
    flat = (packed or (setting == "auto" and waste > 0)) and use_segment_attention(model)
    packed = packed or flat
    return Layout(packed, flat, tokens_per_forward(cfg.tokens_per_forward, cfg.max_seq_len, device.type), waste)
