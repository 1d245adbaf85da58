"""The one canonical record every input format is turned into; later stages read only this."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["system", "user", "assistant"]


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    role: Role
    content: str
    # 0 keeps an assistant turn as context only (OpenAI's per-message weight); 1 trains on it.
    weight: float | None = None


class Example(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    messages: list[Message]
    label: str | None = None
    weight: float = 1.0
    meta: dict[str, Any] = Field(default_factory=dict)

    @property
    def prompt_messages(self) -> list[Message]:
        """Everything before the final assistant turn: what the model is given at evaluation."""
        return self.messages[:-1] if self.messages and self.messages[-1].role == "assistant" else self.messages

    @property
    def reference(self) -> str | None:
        """The final assistant answer: what the model should produce."""
        last = self.messages[-1] if self.messages else None
        return last.content if last is not None and last.role == "assistant" else None

    def content_key(self) -> str:
        """Identity of what the example says, independent of its id: used for hashes and leak checks."""
        return messages_key(self.messages).hex()


def messages_key(messages: list[Message]) -> bytes:
    """The SHA-256 digest behind Example.content_key, for any list of messages (e.g. a prompt)."""
    payload = [(m.role, " ".join(m.content.split())) for m in messages]
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode()).digest()


def normalised_key(example: Example) -> tuple[tuple[str, str], ...]:
    """Exact-duplicate identity: every message, case-folded, whitespace collapsed (dedup and Rows both key on it)."""
    return tuple((m.role, " ".join(m.content.casefold().split())) for m in example.messages)


def content_hash(examples: list[Example]) -> str:
    """Order-independent hash of a set of examples: the dataset's (or split's) version."""
    digest = hashlib.sha256()
    for key in sorted(e.content_key() for e in examples):
        digest.update(key.encode())
    return digest.hexdigest()[:16]
