"""How long an epoch will take on this machine, measured rather than guessed: a few real
optimiser steps of the default method on the user's own examples."""

from __future__ import annotations

import time

import torch

from tunesmith.config import ModelSpec, TrainSpec
from tunesmith.data.example import Example

CALIBRATION_STEPS = 2


def seconds_per_token(model_name: str, examples: list[Example], spec: TrainSpec | None = None) -> float:
    from tunesmith.models.loading import load_model
    from tunesmith.train.collate import encode_all
    from tunesmith.train.methods import apply_method
    from tunesmith.train.trainer import _optimizer_step

    spec = spec or TrainSpec()
    model, tokenizer, device = load_model(ModelSpec(name=model_name))
    model = apply_method(model, spec)
    model.train()
    items, _ = encode_all(tokenizer, examples[: spec.batch_size * (CALIBRATION_STEPS + 1)], spec.max_seq_len, spec.train_on)
    items.sort(key=lambda item: len(item.input_ids))  # training groups by length too; unsorted batches time padding
    batches = [items[i : i + spec.batch_size] for i in range(0, len(items), spec.batch_size)]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-6)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    _optimizer_step(model, [batches[0]], pad_id, device, params, optimizer, spec.max_grad_norm)  # warm-up: allocations, kernels
    started, tokens = time.perf_counter(), 0
    for batch in batches[1:]:
        tokens += _optimizer_step(model, [batch], pad_id, device, params, optimizer, spec.max_grad_norm)[3]
    return (time.perf_counter() - started) / max(1, tokens)
