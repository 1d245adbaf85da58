"""Tool calling on /v1/chat/completions: the request's tools into the prompt, the answer's calls into
OpenAI's response shape, whole or streamed (docs/tools.md).

The answer is read with the renderer's parser (chat_template.tools.parse_calls), the one evaluation
scores with. `tool_choice`: "none" renders no tools and reads no calls; "auto" lets the model
choose; "required" and a named function start the answer with the tool template's opening
(`<tool_call>` and the name), as prompting the model's first tokens is all an unconstrained
decoder can do to make it call.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from tunesmith.chat_template.tools import TOOL_CALL_OPEN, ParsedCall, parse_calls
from tunesmith.serve.protocol import ChatCompletionRequest, NamedToolChoice, ServeError, assistant_message


@dataclass(frozen=True)
class Offer:
    """What a request offers the model: its tools (None: answer in text only) and the forced start of the answer."""

    tools: list[dict[str, Any]] | None = None
    prefix: str = ""
    parallel: bool = True

    @property
    def names(self) -> list[str]:
        return [t["function"]["name"] for t in self.tools or ()]


def offer(req: ChatCompletionRequest) -> Offer:
    if not req.tools or req.tool_choice == "none":
        if isinstance(req.tool_choice, NamedToolChoice) or req.tool_choice == "required":
            raise ServeError(400, "tool_choice asks for a tool call but the request offers no tools; add 'tools'.", param="tool_choice", code="invalid_value")
        return Offer()
    tools = [t.model_dump(exclude_none=True) for t in req.tools]
    names = [t["function"]["name"] for t in tools]
    if len(set(names)) != len(names):
        raise ServeError(400, "Each tool's function name must be unique.", param="tools", code="invalid_value")
    prefix = ""
    if req.tool_choice == "required":
        prefix = f'{TOOL_CALL_OPEN}\n{{"name": "'
    elif isinstance(req.tool_choice, NamedToolChoice):
        name = req.tool_choice.function.name
        if name not in names:
            raise ServeError(400, f"tool_choice names '{name}', which is not among the tools ({', '.join(names)}).", param="tool_choice", code="invalid_value")
        # No space after the colon: byte-level BPE tokenizers glue a space to the word after it, so a
        # trailing one would be a token the model never saw in that place.
        prefix = f'{TOOL_CALL_OPEN}\n{{"name": {json.dumps(name)}, "arguments":'
    return Offer(tools, prefix, req.parallel_tool_calls is not False)


def _openai_calls(calls: list[ParsedCall], parallel: bool) -> list[dict[str, Any]]:
    kept = calls[:1] if not parallel else calls
    return [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in kept]


def split_answer(text: str, offered: Offer) -> tuple[str | None, list[dict[str, Any]]]:
    """(content, tool_calls) of a finished answer. A block that is not a readable call stays text:
    a client is never handed a call without a function name."""
    if offered.tools is None:
        return text, []
    content, calls = parse_calls(text, offered.names)
    if not calls or any(not c.name for c in calls):
        return text, []
    return content or None, _openai_calls(calls, offered.parallel)


def answer(text: str, reason: str, offered: Offer) -> tuple[dict[str, Any], str]:
    """The choice's message and finish_reason ("tool_calls" when the model stopped after calling)."""
    content, calls = split_answer(offered.prefix + text, offered)
    return assistant_message(content, calls or None), ("tool_calls" if calls and reason == "stop" else reason)


@dataclass
class CallStream:
    """One streamed choice's text turned into OpenAI's deltas: content as it comes, except text that
    may open a call, which is held until it is known to be one; calls are sent once read whole, as
    OpenAI sends them (a first delta with the id, type and name, then the arguments)."""

    offered: Offer
    text: str = ""
    sent: int = 0  # characters of `text` already sent as content
    calling: bool = False
    deltas: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.text = self.offered.prefix
        self.calling = bool(self.offered.prefix)

    def push(self, piece: str) -> list[dict[str, Any]]:
        self.text += piece
        if self.calling:
            return []
        start = self.text.find(TOOL_CALL_OPEN, self.sent)
        if start >= 0 or (not self.text[: self.sent].strip() and self.text.lstrip().startswith("{")):
            # A call begins here (or the answer may be a bare call object): the rest is held until the end.
            self.calling = True
            return self._content(start if start >= 0 else self.sent)
        return self._content(len(self.text) - _held(self.text))

    def _content(self, upto: int) -> list[dict[str, Any]]:
        piece, self.sent = self.text[self.sent : upto], max(self.sent, upto)
        return [{"content": piece}] if piece else []

    def finish(self, reason: str) -> tuple[list[dict[str, Any]], str]:
        """The last deltas and the finish_reason."""
        content, calls = split_answer(self.text, self.offered)
        if not calls:
            return self._content(len(self.text)), reason
        out: list[dict[str, Any]] = []
        unsent = (content or "")[self.sent :] if content and content.startswith(self.text[: self.sent]) else ""
        if unsent.strip():
            out.append({"content": unsent})
        for index, call in enumerate(calls):
            head = {"index": index, "id": call["id"], "type": "function", "function": {"name": call["function"]["name"], "arguments": ""}}
            out.append({"tool_calls": [head]})
            out.append({"tool_calls": [{"index": index, "function": {"arguments": call["function"]["arguments"]}}]})
        return out, ("tool_calls" if reason == "stop" else reason)


def _held(text: str) -> int:
    """How many characters at the end of `text` could be the start of a call's opening tag."""
    for size in range(min(len(TOOL_CALL_OPEN) - 1, len(text)), 0, -1):
        if TOOL_CALL_OPEN.startswith(text[-size:]):
            return size
    return 0
