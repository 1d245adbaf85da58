"""Faster kernels for the same arithmetic, each tested equal to the plain path (tests/test_fused_*.py,
test_segments.py, test_head_loss.py): fused LoRA and RMSNorm, CPU attention, per-example attention
for flat packed rows (segments.py, chosen by the layout), the chunked output head (head_loss.py,
used by the causal-LM loss), and CPU memory reuse.

`switch_on` is the one call that turns the model-level ones on, made by the recipe before training
and by the estimate before timing, so both run the same kernels."""

from __future__ import annotations

from typing import Any

import torch

from tunesmith.train.kernels.cpu_memory import keep_freed_memory
from tunesmith.train.kernels.fused_lora import fuse_lora
from tunesmith.train.kernels.fused_norm import fuse_rms_norms


def switch_on(model: Any, device: torch.device) -> None:
    """Idempotent: LoRA layers fused everywhere; on CPU, RMSNorm fused and freed memory kept for reuse."""
    fuse_lora(model)
    if device.type == "cpu":
        keep_freed_memory()  # activations reuse freed pages instead of faulting in new ones
        fuse_rms_norms(model)
