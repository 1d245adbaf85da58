"""Perplexity of the reference answers: how likely each model finds the answers it should give.

Computed from the model's own loss on the final assistant turn only (the same token mask training
uses, so the end-of-turn token counts too); earlier assistant turns, e.g. few-shot examples, are
context. Unlike exact match it moves with every small improvement, so it shows learning early."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from tunesmith.chat_template import IGNORE, collate, encode
from tunesmith.data.example import Example

MAX_BATCH = 8  # logits are batch x length x vocabulary floats: ~50k-word vocabularies need small batches


def final_turn_only(example: Example) -> Example:
    """The example with every assistant turn but the last weighted 0, so only the reference is scored."""
    last = len(example.messages) - 1
    messages = [m.model_copy(update={"weight": 0.0}) if m.role == "assistant" and i != last else m for i, m in enumerate(example.messages)]
    return example.model_copy(update={"messages": messages})


@torch.no_grad()
def reference_nll(model: Any, tokenizer: Any, examples: list[Example], *, batch_size: int = MAX_BATCH, max_seq_len: int = 4096) -> list[tuple[float, int]]:
    """(summed negative log-likelihood in nats, scored tokens) per example, in the examples' order."""
    model.eval()
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    encoded = [encode(tokenizer, final_turn_only(e), max_seq_len, "assistant") for e in examples]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    results: list[tuple[float, int]] = [(0.0, 0)] * len(encoded)
    step = max(1, min(batch_size, MAX_BATCH))
    for start in range(0, len(order), step):
        chunk = order[start : start + step]
        batch = {k: v.to(device) for k, v in collate([encoded[i] for i in chunk], pad_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        logits = logits[:, -batch["input_ids"].shape[1] :]  # prompt tuning puts its virtual tokens' logits first
        labels = batch["labels"][:, 1:]
        losses = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")
        mask = labels != IGNORE
        for row, index in enumerate(chunk):
            results[index] = (float(losses[row][mask[row]].sum()), int(mask[row].sum()))
    return results


def perplexity(nll_and_tokens: list[tuple[float, int]]) -> float:
    """exp(mean loss per token), pooled over all scored tokens (longer answers weigh more)."""
    tokens = sum(n for _, n in nll_and_tokens)
    return math.exp(sum(loss for loss, _ in nll_and_tokens) / tokens) if tokens else float("nan")
