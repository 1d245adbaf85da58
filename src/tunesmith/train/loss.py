"""Token-level cross-entropy over trained positions only.

The output projection runs only on positions that carry a label. With loss on assistant
tokens, that is a small share of the sequence, and on a 49k-token vocabulary the skipped
projection is a large share of the step's compute. The projection and the cross-entropy then
run together in chunks (head_loss.py), so no full logits tensor is ever held.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from tunesmith.train.collate import IGNORE
from tunesmith.train.head_loss import fused_head_loss


def _unwrap(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _selective_head_supported(model: Any) -> bool:
    from tunesmith.train.methods import is_prompt_learning
    from tunesmith.train.sharding import is_sharded

    if is_prompt_learning(model):  # the virtual tokens are added in PEFT's forward, which the shortcut skips
        return False
    if is_sharded(model):  # FSDP gathers the weights in the model's own forward, which the shortcut skips
        return False
    base = _unwrap(model)
    config = getattr(base, "config", None)
    return (
        hasattr(base, "get_decoder")
        and base.get_output_embeddings() is not None
        and not getattr(config, "final_logit_softcapping", None)
        and getattr(config, "logit_scale", None) is None
    )


def summed_loss(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(sum of token losses, number of trained tokens): the caller divides by the tokens of the
    whole optimiser step, so gradient accumulation weighs every token equally."""
    targets = batch["labels"][:, 1:]
    selected = targets != IGNORE
    n_tokens = int(selected.sum())
    # Packed rows carry position_ids and no attention_mask; with no cache, transformers then keeps
    # the packed examples from attending to each other. Flat rows also carry their example
    # boundaries, for segments.segment_attention.
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k") if batch.get(key) is not None}
    if "cu_seq_lens_q" in inputs:
        # Read once here rather than in each layer's attention: on a GPU every read waits for the device.
        inputs["max_length_q"] = inputs["max_length_k"] = int(torch.diff(inputs["cu_seq_lens_q"]).max())
    if _selective_head_supported(model):
        base = _unwrap(model)
        hidden = base.get_decoder()(**inputs, use_cache=False).last_hidden_state[:, :-1][selected]
        head = base.get_output_embeddings()
        if type(head) is torch.nn.Linear:  # an adapter or wrapper on the head has its own forward
            return fused_head_loss(hidden, head, targets[selected]), n_tokens
        logits = head(hidden)
    else:
        logits = model(**inputs, use_cache=False).logits  # as above: no cache keeps packed examples apart
        # Prompt tuning returns logits for its virtual tokens first; the input's are the last ones.
        logits = logits[:, -batch["input_ids"].shape[1] :][:, :-1][selected]
    loss = F.cross_entropy(logits.float(), targets[selected], reduction="sum")
    return loss, n_tokens
