"""The one canonical record every input format is turned into; later stages read only this.

Function calling (docs/tools.md) is held in OpenAI's shape whatever form the file used: an
assistant turn's `tool_calls` (id, type "function", function {name, arguments as JSON text}),
a `tool` turn's `tool_call_id`, and the example's `tools` (JSON-schema function definitions).
The fields are left out of the JSON when empty, so examples without tools are written exactly
as before and hash as before."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["system", "user", "assistant", "tool"]


def _unset(value: Any) -> bool:
    return value is None


def Optional(default: Any = None) -> Any:  # noqa: N802 - reads as a type in the field lists below
    """An optional field left out of dumps when unset (None), so records without it are written as before."""
    return Field(default, exclude_if=_unset)


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    arguments: str  # JSON text, as OpenAI sends it; parsed where it is compared or rendered

    def parsed(self) -> Any:
        return json.loads(self.arguments)


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class FunctionDef(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    description: str | None = Optional()
    parameters: dict[str, Any] | None = Optional()
    strict: bool | None = Optional()


class Tool(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["function"] = "function"
    function: FunctionDef


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    role: Role
    content: str
    # 0 keeps an assistant turn as context only (OpenAI's per-message weight); 1 trains on it.
    weight: float | None = None
    tool_calls: list[ToolCall] | None = Optional()
    tool_call_id: str | None = Optional()

    def calls_key(self) -> list[Any]:
        """The calls as comparable data (arguments parsed, so key order and spacing do not count)."""
        return [[c.function.name, _parsed_or_text(c.function.arguments)] for c in self.tool_calls or ()]


def _parsed_or_text(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except (ValueError, RecursionError):
        return arguments


class Example(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    messages: list[Message]
    label: str | None = None
    # A preference pair: `messages` ends with the preferred answer and `rejected` is the answer not
    # preferred to the same prompt (prompt_messages). One record serves both: SFT-style stages
    # (generation, references, token counts) read the preferred answer as the reference.
    rejected: Message | None = Optional()
    weight: float = 1.0
    meta: dict[str, Any] = Field(default_factory=dict)
    tools: list[Tool] | None = Optional()
    parallel_tool_calls: bool | None = Optional()

    @property
    def prompt_messages(self) -> list[Message]:
        """Everything before the final assistant turn: what the model is given at evaluation."""
        return self.messages[:-1] if self.messages and self.messages[-1].role == "assistant" else self.messages

    @property
    def reference(self) -> str | None:
        """The final assistant answer: what the model should produce."""
        last = self.messages[-1] if self.messages else None
        return last.content if last is not None and last.role == "assistant" else None

    @property
    def reference_calls(self) -> list[ToolCall] | None:
        """The final assistant turn's tool calls (None when it answers in text or there is none)."""
        last = self.messages[-1] if self.messages else None
        return last.tool_calls if last is not None and last.role == "assistant" and last.tool_calls else None

    def tools_json(self) -> list[dict[str, Any]] | None:
        return [t.model_dump() for t in self.tools] if self.tools else None

    def content_key(self) -> str:
        """Identity of what the example says, independent of its id: used for hashes and leak checks."""
        return messages_key(self.messages, self.tools, self.rejected).hex()

    @property
    def is_pair(self) -> bool:
        return self.rejected is not None


def _message_payload(m: Message, text: str) -> tuple:
    # Tool fields join the key only when present, so an example without them hashes as it always did.
    if m.tool_calls or m.tool_call_id is not None:
        return (m.role, text, m.calls_key(), m.tool_call_id)
    return (m.role, text)


def messages_key(messages: list[Message], tools: list[Tool] | None = None, rejected: Message | None = None) -> bytes:
    """The SHA-256 digest behind Example.content_key, for any list of messages (e.g. a prompt); a
    preference pair's rejected answer is part of what it says (two pairs may share prompt and answer)."""
    payload: list[Any] = [_message_payload(m, " ".join(m.content.split())) for m in messages]
    if tools:
        payload.append(["tools", [t.model_dump() for t in tools]])
    if rejected is not None:
        payload.append(("rejected", " ".join(rejected.content.split())))
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False, sort_keys=True).encode()).digest()


def normalised_key(example: Example) -> tuple[tuple, ...]:
    """Exact-duplicate identity: every message, case-folded, whitespace collapsed (dedup and Rows both key on it)."""
    key = tuple(_message_payload(m, " ".join(m.content.casefold().split())) for m in example.messages)
    if example.tools:
        key += (("tools", json.dumps([t.model_dump() for t in example.tools], sort_keys=True)),)
    if example.rejected is not None:
        key += (("rejected", " ".join(example.rejected.content.casefold().split())),)
    return key


def content_hash(examples: list[Example]) -> str:
    """Order-independent hash of a set of examples: the dataset's (or split's) version."""
    digest = hashlib.sha256()
    for key in sorted(e.content_key() for e in examples):
        digest.update(key.encode())
    return digest.hexdigest()[:16]
