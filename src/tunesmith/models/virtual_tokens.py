"""Greedy decoding for prompt and prefix tuning, with left-padded batches.

PEFT's own `generate` gets both wrong with the transformers 5 generation loop (measured with
peft 0.21 / transformers 5.24): prompt tuning drops the position ids, so a left-padded row
is answered differently than the same prompt alone; prefix tuning never puts the prefix into
the cache, so it answers exactly like the base model. This loop feeds the virtual tokens the
way training saw them: at positions 0..n-1, with every real token counted after them and
padding masked and skipped in the positions.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch


def _cache_keyword(model: Any) -> str:
    """transformers 5.24 renamed `past_key_values` to `cache` (the old name is deprecated); 5.0 knows only the old."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _cache_of(output: Any) -> Any:
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


@torch.no_grad()
def generate_with_virtual_tokens(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, max_new_tokens: int, eos_ids: list[int], pad_id: int
) -> torch.Tensor:
    """The new tokens only (batch x up to max_new_tokens); rows that ended are filled with pad_id."""
    from peft.utils import PeftType

    config = model.active_peft_config
    base = model.get_base_model()
    batch, n_virtual = input_ids.shape[0], config.num_virtual_tokens
    cache_kw = _cache_keyword(base)
    mask = torch.cat([attention_mask.new_ones(batch, n_virtual), attention_mask], dim=1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    if config.peft_type == PeftType.PREFIX_TUNING:
        out = base(input_ids=input_ids, attention_mask=mask, position_ids=positions[:, n_virtual:], use_cache=True, **{cache_kw: model.get_prompt(batch)})
    else:
        prompts = model.get_prompt(batch).to(base.dtype)
        embeds = torch.cat([prompts, model.word_embeddings(input_ids)], dim=1)
        out = base(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True)
    stop = torch.tensor(eos_ids, device=input_ids.device)
    done = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
    position = positions[:, -1:]
    tokens = []
    for _ in range(max_new_tokens):
        token = out.logits[:, -1].argmax(-1)
        token = torch.where(done, torch.full_like(token, pad_id), token)
        tokens.append(token)
        done |= torch.isin(token, stop)
        if bool(done.all()):
            break
        mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=1)
        position = position + 1
        out = base(input_ids=token[:, None], attention_mask=mask, position_ids=position, use_cache=True, **{cache_kw: _cache_of(out)})
    return torch.stack(tokens, dim=1) if tokens else input_ids.new_empty(batch, 0)
