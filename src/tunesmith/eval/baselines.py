"""Prompting baselines: what the base model does with a better prompt instead of fine-tuning.

`few-shot` puts k training examples before each question as earlier turns of the conversation;
`system` gives the base model the user's system prompt. Both keep the evaluation examples, their
references and decoding the same as the tuned model's, so their scores compare directly."""

from __future__ import annotations

import random

from tunesmith.data.example import Example, Message
from tunesmith.errors import UserError

BASELINES = ("few-shot", "system")


def parse_baselines(text: str | None) -> list[str]:
    names = [n.strip().lower().replace("_", "-") for n in (text or "").split(",") if n.strip()]
    names = ["few-shot" if n in ("fewshot", "few-shot", "shots") else n for n in names]
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise UserError(f"unknown baseline(s): {', '.join(unknown)}", fix=f"use any of {', '.join(BASELINES)}, comma-separated")
    return list(dict.fromkeys(names))


def few_shot(examples: list[Example], train: list[Example], k: int, seed: int = 0) -> list[Example]:
    """Each example with the same k seeded training examples as prior user/assistant turns
    (after the example's own system message, if it has one)."""
    usable = [e for e in train if e.reference is not None and any(m.role == "user" for m in e.prompt_messages)]
    if len(usable) < k:
        raise UserError(f"the few-shot baseline needs {k} training examples with an answer; the train split has {len(usable)}", fix="lower --shots")
    shots = random.Random(seed).sample(usable, k)
    # model_copy keeps a shot's tool calls and tool answers with its turns.
    turns = [m.model_copy(update={"weight": 0.0 if m.role == "assistant" else None}) for shot in shots for m in shot.messages if m.role != "system"]
    out = []
    for example in examples:
        system = [m for m in example.messages if m.role == "system"]
        rest = [m for m in example.messages if m.role != "system"]
        out.append(example.model_copy(update={"messages": [*system, *turns, *rest]}))
    return out


def with_system_prompt(examples: list[Example], prompt: str | None) -> list[Example]:
    """Each example with `prompt` as its only system message."""
    if not prompt or not prompt.strip():
        raise UserError("the system baseline needs a system prompt", fix="pass --system-prompt TEXT, or set eval.system_prompt in the run config")
    message = Message(role="system", content=prompt)
    return [e.model_copy(update={"messages": [message, *(m for m in e.messages if m.role != "system")]}) for e in examples]
