"""OpenAI's request and response shapes, with OpenAI's field names, apart from any serving logic
(as vLLM's entrypoints/openai/protocol.py is).

Unknown request fields are refused with a 400 naming them, as OpenAI's API does ("Unrecognized
request argument supplied"): a misspelt `max_token` would otherwise be ignored silently and the
answer run to the context limit. Fields OpenAI defines that this server cannot honour are
accepted at their neutral value only (`logprobs: false`, `presence_penalty: 0` ...); any other
value is a 400 naming the field, never a silently different answer. Tools are served
(serve/tools.py, docs/tools.md): `tools`, `tool_choice`, `parallel_tool_calls`, and answers with
`message.tool_calls` / `delta.tool_calls` and finish_reason "tool_calls".
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_STOP = 4  # OpenAI's limit on stop sequences
MAX_N = 16


class ServeError(Exception):
    """An answer in OpenAI's error shape: {"error": {message, type, param, code}} with this status."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    n: int | None = Field(None, ge=1, le=MAX_N)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # Accepted at their neutral value only (see `unsupported`).
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    logprobs: Any = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> list[str] | None:
        stops = [value] if isinstance(value, str) else value
        if stops is not None and (len(stops) > MAX_STOP or any(not s for s in stops)):
            raise ValueError(f"at most {MAX_STOP} stop sequences, none empty")
        return stops or None

    def stops(self) -> list[str]:
        return list(self.stop or [])

    def unsupported(self) -> str | None:
        """The first field set to something this server does not do (its answer would silently differ)."""
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) not in (None, 0, 0.0):
                return name
        if self.logit_bias:
            return "logit_bias"
        if self.logprobs not in (None, False):
            return "logprobs"
        return None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class FunctionSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: FunctionSpec


class CalledFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    arguments: str


class MessageToolCall(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    type: Literal["function"] = "function"
    function: CalledFunction


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: NamedFunction


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, refusal ...: passed to the chat template as given

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    tool_calls: list[MessageToolCall] | None = None  # an earlier answer's calls, sent back with their results
    tool_call_id: str | None = None

    def for_template(self) -> dict[str, Any]:
        text = self.content if isinstance(self.content, str) or self.content is None else "".join(p.text for p in self.content)
        # The developer role is OpenAI's newer name for system; chat templates know only "system".
        out = {**(self.model_extra or {}), "role": "system" if self.role == "developer" else self.role, "content": text or ""}
        if self.tool_calls:
            out["tool_calls"] = [c.model_dump() for c in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    # OpenAI fields accepted at their neutral value only.
    top_logprobs: int | None = None
    tools: list[ToolSpec] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None

    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def unsupported(self) -> str | None:
        if self.response_format not in (None, {"type": "text"}):
            return "response_format"
        if self.top_logprobs:
            return "top_logprobs"
        return super().unsupported()


class CompletionRequest(_Request):
    prompt: str | list[str] = Field(min_length=1)
    echo: bool | None = False
    suffix: str | None = None
    best_of: int | None = None

    def token_limit(self) -> int | None:
        # /v1/completions defaults to 16 tokens in OpenAI's API; a client relying on that gets the same here.
        return self.max_tokens if self.max_tokens is not None else 16

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def unsupported(self) -> str | None:
        if self.echo:
            return "echo"
        if self.suffix:
            return "suffix"
        if self.best_of not in (None, 1):
            return "best_of"
        return super().unsupported()


ChatCompletionRequest.model_rebuild()
CompletionRequest.model_rebuild()


# ---------------------------------------------------------------- responses


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}


def assistant_message(text: str | None, tool_calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """OpenAI's answer message: content null when the answer is only tool calls."""
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return message


def chat_completion(id: str, model: str, choices: list[tuple[dict[str, Any], str]], prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    """choices: (assistant_message, finish_reason) in index order."""
    return {
        "id": id,
        "object": "chat.completion",
        "created": now(),
        "model": model,
        "choices": [{"index": i, "message": message, "finish_reason": reason, "logprobs": None} for i, (message, reason) in enumerate(choices)],
        "usage": usage(prompt_tokens, completion_tokens),
        "system_fingerprint": None,
    }


def chat_chunk(id: str, model: str, created: int, index: int, delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
    return {
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
        "system_fingerprint": None,
    }


def completion(id: str, model: str, choices: list[tuple[str, str]], prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "id": id,
        "object": "text_completion",
        "created": now(),
        "model": model,
        "choices": [{"index": i, "text": text, "finish_reason": reason, "logprobs": None} for i, (text, reason) in enumerate(choices)],
        "usage": usage(prompt_tokens, completion_tokens),
        "system_fingerprint": None,
    }


def completion_chunk(id: str, model: str, created: int, index: int, text: str, finish_reason: str | None) -> dict[str, Any]:
    return {
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": index, "text": text, "finish_reason": finish_reason, "logprobs": None}],
    }


def model_card(name: str, owned_by: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": owned_by}
