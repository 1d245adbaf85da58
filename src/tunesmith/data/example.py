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
    # A preference pair: `messages` ends with the preferred answer and `rejected` is the answer not
    # preferred to the same prompt (prompt_messages). One record serves both: SFT-style stages
    # (generation, references, token counts) read the preferred answer as the reference.
    rejected: Message | None = None
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
        return messages_key(self.messages, self.rejected).hex()

    @property
    def is_pair(self) -> bool:
        return self.rejected is not None


def messages_key(messages: list[Message], rejected: Message | None = None) -> bytes:
    """The SHA-256 digest behind Example.content_key, for any list of messages (e.g. a prompt); a
    preference pair's rejected answer is part of what it says (two pairs may share prompt and answer)."""
    payload = [(m.role, " ".join(m.content.split())) for m in messages]
    if rejected is not None:
        payload.append(("rejected", " ".join(rejected.content.split())))
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode()).digest()


def normalised_key(example: Example) -> tuple[tuple[str, str], ...]:
    """Exact-duplicate identity: every message, case-folded, whitespace collapsed (dedup and Rows both key on it)."""
    found = tuple((m.role, " ".join(m.content.casefold().split())) for m in example.messages)
    rejected = example.rejected
    return found if rejected is None else (*found, ("rejected", " ".join(rejected.content.casefold().split())))


def content_hash(examples: list[Example]) -> str:
    """Order-independent hash of a set of examples: the dataset's (or split's) version."""
    digest = hashlib.sha256()
    for key in sorted(e.content_key() for e in examples):
        digest.update(key.encode())
    return digest.hexdigest()[:16]
