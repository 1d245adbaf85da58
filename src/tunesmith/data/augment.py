"""Paraphrases of user turns, from a local model or any OpenAI-compatible endpoint.

Synthetic examples only ever join the training split (augmenting evaluation data would grade
the model on text it helped write), carry `meta.synthetic`, and are listed in
`augment_review.jsonl` beside the dataset for a person to read. A paraphrase that drops a code,
number or identifier of the original is discarded: it would teach the model a wrong answer.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict

from tunesmith.config import AugmentSpec
from tunesmith.data.example import Example, Message
from tunesmith.models.endpoint import ChatEndpoint

PARAPHRASE_PROMPT = "Rewrite the user's message in different words. Keep every fact, name, code and number exactly. Reply with the rewritten message only."
# Tokens a paraphrase must keep verbatim: product codes, numbers, ALL-CAPS acronyms.
_KEEP = re.compile(r"\b(?:[A-Za-z]{2,}-\d+|\d[\d.,:/-]*|[A-Z]{2,})\b")

Generator = Callable[[list[str]], list[str]]


class AugmentReport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    generator: str
    requested: int
    added: int
    rejected: dict[str, int]


def endpoint_generator(url: str, model: str, api_key_env: str, max_new_tokens: int, timeout: float = 60.0) -> Generator:
    """Chat completions over HTTP, several at a time; the key comes from the environment, never
    from a config file, and is sent only to `url`'s origin (models/endpoint.py)."""
    endpoint = ChatEndpoint(
        url,
        model,
        role="paraphrase",
        api_key_env=api_key_env,
        timeout=timeout,
        fix="check augment.url, augment.endpoint_model and the key in $" + api_key_env,
        temperature=0.7,
        max_tokens=max_new_tokens,
    )
    return lambda texts: endpoint.many([[{"role": "system", "content": PARAPHRASE_PROMPT}, {"role": "user", "content": t}] for t in texts])


def local_generator(model_name: str, max_new_tokens: int) -> Generator:
    from tunesmith.chat_template import end_of_turn_ids
    from tunesmith.config import ModelSpec
    from tunesmith.models.generate import generate_batched
    from tunesmith.models.loading import load_model

    model, tokenizer, _ = load_model(ModelSpec(name=model_name))
    eot = end_of_turn_ids(tokenizer)

    def paraphrase(texts: list[str]) -> list[str]:
        prompts = [
            Example(id=str(i), messages=[Message(role="system", content=PARAPHRASE_PROMPT), Message(role="user", content=t)]) for i, t in enumerate(texts)
        ]
        return generate_batched(model, tokenizer, prompts, eot, max_new_tokens=max_new_tokens, batch_size=16)[0]

    return paraphrase


def make_generator(spec: AugmentSpec) -> tuple[Generator, str]:
    if spec.url:
        return endpoint_generator(spec.url, spec.endpoint_model or "default", spec.api_key_env, spec.max_new_tokens), f"{spec.url} ({spec.endpoint_model})"
    return local_generator(spec.model, spec.max_new_tokens), spec.model


def rejection(original: str, paraphrase: str) -> str | None:
    text = paraphrase.strip()
    if not text:
        return "empty"
    if " ".join(text.lower().split()) == " ".join(original.lower().split()):
        return "unchanged"
    if not set(_KEEP.findall(original)) <= set(_KEEP.findall(text)):
        return "lost_code_or_number"
    if len(text) > 3 * len(original) + 50:
        return "too_long"
    return None


def augment_train(
    train: list[Example], spec: AugmentSpec, generator: Generator, generator_name: str
) -> tuple[list[Example], AugmentReport, list[dict[str, Any]]]:
    """(synthetic examples, report, review rows). Each source example gets `per_example` tries."""
    chosen = [e for e in train if _last_user(e) is not None][: max(0, round(len(train) * spec.fraction))]
    originals = [(e, _last_user(e)) for e in chosen for _ in range(spec.per_example)]
    outputs = generator([text for _, (_, text) in originals]) if originals else []
    synthetic, review, rejected = [], [], {}
    seen: set[str] = set()
    for (example, (index, text)), paraphrase in zip(originals, outputs):
        reason = rejection(text, paraphrase) or ("duplicate" if paraphrase.strip() in seen else None)
        if reason:
            rejected[reason] = rejected.get(reason, 0) + 1
            continue
        seen.add(paraphrase.strip())
        messages = list(example.messages)
        messages[index] = messages[index].model_copy(update={"content": paraphrase.strip()})
        meta = {**example.meta, "synthetic": True, "method": "paraphrase", "source_id": example.id, "generator": generator_name}
        synthetic.append(example.model_copy(update={"id": f"{example.id}-para{len(synthetic)}", "messages": messages, "meta": meta}))
        review.append({"id": synthetic[-1].id, "source_id": example.id, "original": text, "paraphrase": paraphrase.strip()})
    report = AugmentReport(generator=generator_name, requested=len(originals), added=len(synthetic), rejected=rejected)
    return synthetic, report, review


def _last_user(example: Example) -> tuple[int, str] | None:
    for index in range(len(example.messages) - 1, -1, -1):
        if example.messages[index].role == "user":
            return index, example.messages[index].content
    return None
