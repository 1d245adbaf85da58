"""Preference pairs: OpenAI's preference format and the common prompt/chosen/rejected one, read
into the one canonical Example (the prompt, then the preferred answer, in `messages`; the other
answer in `rejected`).

- `preference` (OpenAI): {"input": {"messages": [...], "tools": [], "parallel_tool_calls": true},
  "preferred_output": [{"role": "assistant", "content": ...}], "non_preferred_output": [...]}.
- `prompt_chosen_rejected` (TRL's preference type): `prompt`, `chosen`, `rejected` as strings, or as
  message lists (TRL's conversational form); without `prompt`, `chosen` and `rejected` are whole
  conversations sharing everything but their last (assistant) message (TRL's implicit prompt).

Each answer is one assistant message, as OpenAI's API requires. The checks and the conversion are
one reading of the record, so `data validate` and `data prepare` name a problem alike.
"""

from __future__ import annotations

from typing import Any

from tunesmith.data.example import Message
from tunesmith.data.records import TURNS, Found, _blank, _check_turn

PREFERENCE_FORMATS = ("preference", "prompt_chosen_rejected")
_OPENAI_INPUT_KEYS = {"messages", "tools", "parallel_tool_calls"}
_SPEC = TURNS["messages"]


def _turns(value: Any, where: str, found: Found) -> list[Message] | None:
    """A list of chat messages checked like a chat file's turns; None when any is unreadable."""
    if not isinstance(value, list) or not value:
        found.append(("missing_messages_list", f"'{where}' must be a non-empty list of {{role, content}} objects", "error"))
        return None
    before = len(found)
    for index, turn in enumerate(value):
        found.extend(_check_turn(turn, f"{where}[{index}]", _SPEC))
    if len(found) > before:
        return None
    # every field the turn checks accepted (so whatever a chat message may carry is kept)
    return [Message.model_validate(turn) for turn in value]


def _answer(value: Any, where: str, found: Found, *, text_allowed: bool) -> Message | None:
    """One assistant answer: a string (where the format allows it) or a list holding one assistant message."""
    if text_allowed and isinstance(value, str):
        if _blank(value):
            found.append(("missing_field", f"field '{where}' is empty; give the answer's text", "error"))
            return None
        return Message(role="assistant", content=value)
    kind = "a string or " if text_allowed else ""
    if not isinstance(value, list) or len(value) != 1:
        count = f"a list of {len(value)}" if isinstance(value, list) else type(value).__name__
        found.append(
            (
                "invalid_preference_output",
                f'\'{where}\' is {count}; it must be {kind}a list holding exactly one assistant message, e.g. [{{"role": "assistant", "content": "..."}}]',
                "error",
            )
        )
        return None
    turns = _turns(value, where, found)
    if turns is None:
        return None
    if turns[0].role != "assistant":
        found.append(("invalid_preference_output", f"'{where}[0]' has role {turns[0].role}; a preferred or rejected answer is an assistant message", "error"))
        return None
    return Message(role="assistant", content=turns[0].content)


def _prompt_ends_with_user(prompt: list[Message], where: str, found: Found) -> None:
    if prompt[-1].role != "user":
        found.append(
            ("last_message_not_user", f"the last message of '{where}' is {prompt[-1].role}; the prompt the answers reply to ends with a user message", "error")
        )


def _read_openai(record: dict, found: Found) -> tuple[list[Message], Message, Message] | None:
    given = record.get("input")
    if not isinstance(given, dict):
        found.append(("invalid_input", f"'input' is {type(given).__name__}; write it as {{\"messages\": [...]}}", "error"))
        return None
    unknown = sorted(map(str, set(given) - _OPENAI_INPUT_KEYS))
    if unknown:
        found.append(("invalid_input", f"'input' has key(s) {', '.join(unknown)}; it holds messages, tools and parallel_tool_calls only", "error"))
    if given.get("tools"):
        # Example carries no tool definitions yet; training on a prompt whose tools are dropped would teach the wrong thing.
        found.append(("unsupported_tools", "'input.tools' is not empty; preference pairs with tool definitions are not read yet: remove the tools", "error"))
    prompt = _turns(given.get("messages"), "input.messages", found)
    if prompt is not None:
        _prompt_ends_with_user(prompt, "input.messages", found)
    chosen = _answer(record.get("preferred_output"), "preferred_output", found, text_allowed=False)
    rejected = _answer(record.get("non_preferred_output"), "non_preferred_output", found, text_allowed=False)
    return None if prompt is None or chosen is None or rejected is None else (prompt, chosen, rejected)


def _read_prompt_chosen_rejected(record: dict, found: Found) -> tuple[list[Message], Message, Message] | None:
    if "prompt" not in record:
        return _read_implicit_prompt(record, found)
    given = record["prompt"]
    if isinstance(given, str):
        prompt = [Message(role="user", content=given)] if not _blank(given) else None
        if prompt is None:
            found.append(("missing_field", "field 'prompt' is empty; give the question both answers reply to", "error"))
    else:
        prompt = _turns(given, "prompt", found)
    if prompt is not None:
        _prompt_ends_with_user(prompt, "prompt", found)
    chosen = _answer(record.get("chosen"), "chosen", found, text_allowed=True)
    rejected = _answer(record.get("rejected"), "rejected", found, text_allowed=True)
    return None if prompt is None or chosen is None or rejected is None else (prompt, chosen, rejected)


def _read_implicit_prompt(record: dict, found: Found) -> tuple[list[Message], Message, Message] | None:
    chosen, rejected = (_turns(record.get(key), key, found) for key in ("chosen", "rejected"))
    if chosen is None or rejected is None:
        return None
    if len(chosen) < 2 or chosen[-1].role != "assistant" or rejected[-1].role != "assistant":
        found.append(
            ("invalid_preference_output", "without 'prompt', 'chosen' and 'rejected' are whole conversations ending in the assistant's answer", "error")
        )
        return None
    if [m.model_dump() for m in chosen[:-1]] != [m.model_dump() for m in rejected[:-1]]:
        found.append(
            (
                "prompt_mismatch",
                "'chosen' and 'rejected' differ before their last message; both must continue the same conversation (or give it as 'prompt')",
                "error",
            )
        )
        return None
    prompt = chosen[:-1]
    _prompt_ends_with_user(prompt, "chosen", found)
    return prompt, Message(role="assistant", content=chosen[-1].content), Message(role="assistant", content=rejected[-1].content)


_READERS = {"preference": _read_openai, "prompt_chosen_rejected": _read_prompt_chosen_rejected}


def read_pair(record: dict, fmt: str) -> tuple[Found, tuple[list[Message], Message, Message] | None]:
    """Every problem of a preference record, and (prompt, preferred, rejected) when it has no error."""
    found: Found = []
    pair = _READERS[fmt](record, found)
    if pair is not None and " ".join(pair[1].content.split()) == " ".join(pair[2].content.split()):
        found.append(("identical_answers", "the preferred and the rejected answer are the same text: the pair teaches nothing; remove it", "warning"))
    if any(severity == "error" for _, _, severity in found):
        pair = None
    return found, pair


def check_pair(record: dict, fmt: str) -> Found:
    return read_pair(record, fmt)[0]


def pair_messages(record: dict, fmt: str) -> tuple[list[Message], Message]:
    """(prompt + preferred answer, rejected answer) for to_example; ValueError naming the first problem."""
    found, pair = read_pair(record, fmt)
    if pair is None:
        raise ValueError(next(message for _, message, severity in found if severity == "error"))
    prompt, chosen, rejected = pair
    return [*prompt, chosen], rejected
