"""Turn Examples into token ids and labels with the model's own chat template, and those into a
padded batch: one renderer that data (token counts, checks), train (the label mask), eval and
serving (the prompt) all read. Conversations with tools go through chat_template.tools first: the
model's own template when it renders tools, else tunesmith's documented tool template.

The label mask covers exactly each trained assistant turn's content plus its end-of-turn
token. It is built from character spans of the rendered template, never from the pad id,
so the end-of-turn token stays trained when pad == eos (as in SmolLM2), the commonest
cause of models that never stop talking.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from tunesmith.chat_template.tools import conversation, supports_tools, uses_tools
from tunesmith.errors import UserError

IGNORE = -100


class Conversation(Protocol):
    """What the template reads of an example (data.example.Example is one): kept structural, so
    this module sits below the data package that data, models, train and eval all build on."""

    id: str

    @property
    def messages(self) -> Sequence[Any]: ...

    @property
    def prompt_messages(self) -> Sequence[Any]: ...


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    example_id: str
    # Its trained tokens learn the base model's whole next-token distribution rather than the token
    # written (data.keep_general.target distribution): collation marks them in a "distill" mask.
    distill: bool = False

    @property
    def n_trained(self) -> int:
        # The first token has nothing before it to predict it from, so it never carries loss.
        return sum(label != IGNORE for label in self.labels[1:])


def _render(tokenizer: Any, messages: list[dict], generation_prompt: bool, tools: list[dict] | None = None) -> str:
    if tools is not None:
        return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=generation_prompt)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _template_message(message: Any) -> dict:
    """A Message as the chat template reads it: role and content, plus tool_calls / tool_call_id when it has them."""
    return message.model_dump(exclude={"weight"})


def _tools_of(example: Any) -> list[dict] | None:
    tools = getattr(example, "tools", None)
    return [t.model_dump() for t in tools] if tools else None


def _conversation(tokenizer: Any, messages: list[dict], tools: list[dict] | None, trained: list[bool]) -> tuple[list[dict], list[bool], list[dict] | None]:
    """The turns as this tokenizer's template is given them (tools.conversation), with which of them carry loss."""
    if not uses_tools(messages, tools):
        return messages, trained, None
    return conversation(messages, tools, native=supports_tools(tokenizer), trained=trained)


def render_messages(tokenizer: Any, messages: list[dict], tools: list[dict] | None = None) -> str:
    """A conversation given as plain messages (chat, a judge's prompt, a served request with its tools), ready for the next assistant turn."""
    turns, _, native_tools = _conversation(tokenizer, messages, tools, [False] * len(messages))
    return _render(tokenizer, turns, True, native_tools)


def render_prompt(tokenizer: Any, example: Conversation) -> str:
    """The text the model sees at evaluation and serving: identical to training's prefix."""
    return render_messages(tokenizer, [_template_message(m) for m in example.prompt_messages], _tools_of(example))


def trained_spans(tokenizer: Any, example: Conversation, train_on: str) -> tuple[str, list[tuple[int, int]]]:
    """The full rendered text and the character spans that carry loss: each trained assistant turn,
    its text and its tool calls; never the tools' definitions or their answers."""
    trains = [message.role == "assistant" and message.weight != 0 for message in example.messages]
    messages, trains, tools = _conversation(tokenizer, [_template_message(m) for m in example.messages], _tools_of(example), trains)
    full = _render(tokenizer, messages, False, tools)
    if train_on == "all":
        return full, [(0, len(full.rstrip()))]
    spans = []
    for index, trained in enumerate(trains):
        if not trained:
            continue
        before = _render(tokenizer, messages[:index], True, tools)
        through = _render(tokenizer, messages[: index + 1], False, tools)
        if not (through.startswith(before) and full.startswith(through)):
            raise UserError(
                "this model's chat template rewrites earlier turns, so the assistant text cannot be located",
                where=f"example {example.id}",
                fix="use train.train_on: all, or a model whose template renders each turn independently",
            )
        # The turn's text ends with its end-of-turn marker; whitespace after it is not the model's to learn.
        spans.append((len(before), len(through.rstrip())))
    return full, spans


def encode(tokenizer: Any, example: Conversation, max_seq_len: int, train_on: str = "assistant") -> Encoded:
    text, spans = trained_spans(tokenizer, example, train_on)
    tokens = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = tokens["input_ids"][:max_seq_len]
    labels = [IGNORE] * len(ids)
    for position, (start, _end) in enumerate(tokens["offset_mapping"][: len(ids)]):
        if any(lo <= start < hi for lo, hi in spans):
            labels[position] = ids[position]
    return Encoded(ids, labels, example.id)


def end_of_turn_ids(tokenizer: Any) -> list[int]:
    """Token ids that end an assistant turn in this template: generation stops at any of them."""
    probe = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
    text = _render(tokenizer, probe, False)
    tail = text[text.rindex("y") + 1 :]
    tail_ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids)
    found = [i for i in tail_ids if i in special][:1]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in found:
        found.append(tokenizer.eos_token_id)
    if not found:
        raise UserError("cannot tell which token ends an assistant turn in this chat template", fix="set eos_token in the tokenizer config")
    return found


def encode_all(tokenizer: Any, examples: Sequence[Conversation], max_seq_len: int, train_on: str) -> tuple[list[Encoded], list[str]]:
    """Encoded examples, and the ids of those left with nothing to learn after truncation (dropped, not trained as loss 0)."""
    kept, dropped = [], []
    for example in examples:
        encoded = encode(tokenizer, example, max_seq_len, train_on)
        (kept if encoded.n_trained > 0 else dropped).append(encoded if encoded.n_trained > 0 else example.id)
    return kept, dropped


def collate(batch: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(item.input_ids) for item in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, item in enumerate(batch):
        n = len(item.input_ids)
        ids[row, :n] = torch.tensor(item.input_ids)
        labels[row, :n] = torch.tensor(item.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask, **distill_mask(batch, [(row, 0) for row in range(len(batch))], labels.shape)}


def distill_mask(items: list[Encoded], places: list[tuple[int, int]], shape: torch.Size) -> dict[str, torch.Tensor]:
    """{"distill": where the distilled items lie} given each item's (row, first column); nothing when
    no item distils, so ordinary batches carry no extra tensor."""
    if not any(item.distill for item in items):
        return {}
    mask = torch.zeros(shape, dtype=torch.bool)
    for item, (row, start) in zip(items, places):
        mask[row, start : start + len(item.input_ids)] = item.distill
    return {"distill": mask}


def collate_flat(items: list[Encoded]) -> dict[str, torch.Tensor]:
    """One row of examples end to end, with their boundaries (cu_seq_lens) for per-example attention: no padding."""
    ids, labels, positions, bounds = [], [], [], [0]
    for item in items:
        n = len(item.input_ids)
        ids.extend(item.input_ids)
        labels.extend([IGNORE, *item.labels[1:]])  # nothing in this example predicts its first token; the previous example must not
        positions.extend(range(n))
        bounds.append(bounds[-1] + n)
    cu = torch.tensor(bounds, dtype=torch.int32)
    return {
        "input_ids": torch.tensor([ids]),
        "labels": torch.tensor([labels]),
        "position_ids": torch.tensor([positions]),
        "cu_seq_lens_q": cu,
        "cu_seq_lens_k": cu,
        **distill_mask(items, [(0, start) for start in bounds[:-1]], torch.Size([1, len(ids)])),
    }
