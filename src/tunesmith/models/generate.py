"""Batched generation with the training chat template, stopping at end-of-turn: greedy by default,
sampled (temperature, top-p, seeded) when asked."""

from __future__ import annotations

import time
from typing import Any

import torch

from tunesmith.chat_template import Conversation, render_messages, render_prompt
from tunesmith.models.methods import is_prompt_learning
from tunesmith.models.virtual_tokens import generate_with_virtual_tokens


def generate_batched(
    model: Any,
    tokenizer: Any,
    examples: list[Conversation] | list[str],
    eot_ids: list[int],
    *,
    max_new_tokens: int,
    batch_size: int,
    on_batch=None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
) -> tuple[list[str], float]:
    """Outputs in the examples' order, and the seconds taken. Prompts of similar length share a
    batch so little compute goes to padding; left padding keeps every prompt's end aligned. A string
    is a prompt already rendered with the chat template."""
    started = time.perf_counter()
    tokens = generate_tokens(
        model,
        tokenizer,
        examples,
        eot_ids,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        on_batch=on_batch,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
    )
    outputs = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in tokens]
    return outputs, time.perf_counter() - started


@torch.no_grad()
def generate_tokens(
    model: Any,
    tokenizer: Any,
    examples: list[Conversation] | list[str],
    eot_ids: list[int],
    *,
    max_new_tokens: int,
    batch_size: int,
    on_batch=None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
) -> list[list[int]]:
    """generate_batched's answers as token ids, each cut after its first end-of-turn token: an answer
    that ends without one ran to max_new_tokens (export's verification counts those)."""
    model.eval()
    prompts = [e if isinstance(e, str) else render_prompt(tokenizer, e) for e in examples]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    outputs: list[list[int]] = [[] for _ in prompts]
    tokenizer.padding_side = "left"
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eot_ids[0]
    device = next(model.parameters()).device
    # transformers warns about sampling settings under greedy decoding, so they are set only when sampling.
    decoding = (
        {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": None}
        if temperature > 0
        else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    )
    if temperature > 0:  # greedy decoding draws nothing, so it leaves a training run's random stream alone
        torch.manual_seed(seed)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        encoded = tokenizer([prompts[i] for i in chunk], return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        if is_prompt_learning(model):  # greedy only: PEFT's generate mishandles virtual tokens (see virtual_tokens.py)
            new_tokens = generate_with_virtual_tokens(
                model, encoded["input_ids"], encoded["attention_mask"], max_new_tokens=max_new_tokens, eos_ids=eot_ids, pad_id=pad_id
            )
        else:
            generated = model.generate(
                **encoded,
                max_new_tokens=max_new_tokens,
                eos_token_id=eot_ids,
                pad_token_id=pad_id,
                **decoding,
            )
            new_tokens = generated[:, encoded["input_ids"].shape[1] :]
        for row, index in enumerate(chunk):
            outputs[index] = until_end_of_turn(new_tokens[row].tolist(), eot_ids)
        if on_batch:
            on_batch(len(chunk))
    return outputs


def until_end_of_turn(ids: list[int], eot_ids: list[int]) -> list[int]:
    """The answer's tokens through its first end-of-turn token; what follows is padding of a finished row."""
    stops = set(eot_ids)
    for position, token in enumerate(ids):
        if token in stops:
            return ids[: position + 1]
    return ids


def generate_one(model: Any, tokenizer: Any, messages: list[dict], eot_ids: list[int], max_new_tokens: int = 256) -> str:
    outputs, _ = generate_batched(model, tokenizer, [render_messages(tokenizer, messages)], eot_ids, max_new_tokens=max_new_tokens, batch_size=1)
    return outputs[0]
