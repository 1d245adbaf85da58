"""Function calling in the rendered text, both ways: tools and calls into the turns a chat template
is given, and a model's answer back into calls (docs/tools.md). Training, evaluation, export
checks and serving all go through here, so they render and read calls alike.

A model whose own chat template renders tools (it shows the definitions, the calls' arguments and
the tool answers; checked by rendering a probe, since many templates silently drop them) is given
them natively: `apply_chat_template(messages, tools=...)`. Any other model (SmolLM2's template,
plain ChatML) gets tunesmith's tool template, the Hermes / Qwen2.5 convention expressed as plain
turns its own template renders:

- the tools' JSON schemas in the system turn (appended to the system prompt, or a system turn of
  their own), inside <tools></tools> with the instruction to answer calls as below;
- each call in the assistant turn as `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`
  after the turn's text, if any;
- tool answers as a user turn of `<tool_response>\\n...\\n</tool_response>` blocks (consecutive
  answers to parallel calls share one turn).

`parse_calls` reads calls back from `<tool_call>` blocks (what both this template and Qwen/Hermes
templates produce) or, when tools were offered, from an answer that is a single
{"name", "arguments" | "parameters"} object (Llama 3.1's form).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
TOOLS_PROMPT = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{tools}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n"
    '<tool_call>\n{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)


def uses_tools(messages: list[dict], tools: list[dict] | None) -> bool:
    return bool(tools) or any(m.get("tool_calls") or m.get("role") == "tool" for m in messages)


def _arguments(arguments: Any) -> Any:
    """Arguments as an object for the template (HF templates expect a dict); JSON text that does not parse stays text."""
    if not isinstance(arguments, str):
        return arguments
    try:
        return json.loads(arguments)
    except (ValueError, RecursionError):
        return arguments


def template_message(message: dict) -> dict:
    """A message as a Hugging Face template reads it: a call's arguments as an object, not JSON text."""
    if not message.get("tool_calls"):
        return message
    calls = [{**c, "function": {**c["function"], "arguments": _arguments(c["function"].get("arguments"))}} for c in message["tool_calls"]]
    return {**message, "tool_calls": calls}


_PROBE_TOOL = {
    "type": "function",
    "function": {
        "name": "probe_tool_q7",
        "description": "probe_desc_q7",
        "parameters": {"type": "object", "properties": {"probe_arg_q7": {"type": "integer"}}},
    },
}
_PROBE = [
    {"role": "user", "content": "probe_question_q7"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"id": "call_q7", "type": "function", "function": {"name": "probe_tool_q7", "arguments": {"probe_arg_q7": 7}}}],
    },
    {"role": "tool", "tool_call_id": "call_q7", "content": "probe_result_q7"},
]


def renders_tools(render: Callable[[list[dict], list[dict]], str]) -> bool:
    """Whether a template, given as render(messages, tools) -> text, shows the tools' definitions, the
    calls' arguments and the tool answers (many accept `tools` and drop it, as SmolLM2's does)."""
    try:
        text = render(_PROBE, [_PROBE_TOOL])
    except Exception:  # a template that refuses the tool role or the tools argument does not support them
        return False
    return all(mark in text for mark in ("probe_desc_q7", "probe_arg_q7", "probe_result_q7"))


def supports_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's own chat template renders tools (probed once per template)."""
    template = getattr(tokenizer, "chat_template", None)
    key = template if isinstance(template, str) else json.dumps(template, sort_keys=True, default=str)
    cache = tokenizer.__dict__.setdefault("_tunesmith_renders_tools", {})
    if key not in cache:
        cache[key] = renders_tools(lambda messages, tools: tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=False))
    return cache[key]


def call_block(name: str, arguments: Any) -> str:
    return f"{TOOL_CALL_OPEN}\n{json.dumps({'name': name, 'arguments': _arguments(arguments)}, ensure_ascii=False)}\n{TOOL_CALL_CLOSE}"


def tools_system_text(tools: list[dict]) -> str:
    return TOOLS_PROMPT.format(tools="\n".join(json.dumps(t, ensure_ascii=False) for t in tools))


def _jinja_text(text: str) -> str:
    """A Jinja string literal: JSON's escapes (\\n, \\", \\uXXXX) are read by Jinja's lexer as Python's."""
    return json.dumps(text, ensure_ascii=True)


def _tools_prompt_parts() -> tuple[str, str]:
    """TOOLS_PROMPT before and after the tools' lines, as tools_system_text fills it."""
    marker = "\x00tools\x00"
    head, tail = TOOLS_PROMPT.format(tools=marker).split(marker)
    return head, tail


TOOL_TEMPLATE_MARK = "tunesmith tool template"


def _preamble() -> str:
    """Jinja that rewrites `messages` as `conversation(native=False)` does, then hides `tools` (the
    model's own template is given none, as in Python). Tags only, back to back, on one line (newlines
    only as escapes inside literals): it writes no text, so the template after it renders as if it
    stood alone. Arguments given as objects are written with
    tojson (json.dumps, as call_block); arguments given as JSON text are written as given (Jinja
    cannot parse JSON): runtimes that follow HF's convention (vLLM, tunesmith) pass objects."""
    head, tail = _tools_prompt_parts()
    head, tail = _jinja_text(head), _jinja_text(tail)
    call_head, call_middle, call_tail = (_jinja_text(t) for t in (TOOL_CALL_OPEN + '\n{"name": ', ', "arguments": ', "}\n" + TOOL_CALL_CLOSE))
    tags = [
        f"{{#- {TOOL_TEMPLATE_MARK}: tools, calls and tool answers as tunesmith renders them (docs/tools.md), then the model's own template -#}}",
        "{%- set ts_ns = namespace(on=(true if tools else false), turns=[], answers=false) -%}",
        "{%- for m in messages -%}{%- if m.tool_calls or m.role == 'tool' -%}{%- set ts_ns.on = true -%}{%- endif -%}{%- endfor -%}",
        "{%- if ts_ns.on -%}",
        "{%- for m in messages -%}",
        "{%- if m.role == 'tool' -%}",
        "{%- set ts_block = '<tool_response>\\n' ~ (m.content or '') ~ '\\n</tool_response>' -%}",
        "{%- if ts_ns.answers -%}{%- set ts_ns.turns = ts_ns.turns[:-1] + [{'role': 'user', 'content': ts_ns.turns[-1].content ~ '\\n' ~ ts_block}] -%}",
        "{%- else -%}{%- set ts_ns.turns = ts_ns.turns + [{'role': 'user', 'content': ts_block}] -%}{%- endif -%}",
        "{%- set ts_ns.answers = true -%}",
        "{%- else -%}",
        "{%- set ts_ns.answers = false -%}",
        "{%- if m.role == 'assistant' and m.tool_calls -%}",
        "{%- set ts_call = namespace(parts=([m.content] if (m.content and m.content.strip()) else [])) -%}",
        "{%- for c in m.tool_calls -%}",
        "{%- set ts_args = c.function.arguments if c.function.arguments is defined else none -%}",
        "{%- set ts_call.parts = ts_call.parts + ["
        + call_head
        + " ~ (c.function.name | tojson) ~ "
        + call_middle
        + " ~ (ts_args if ts_args is string else (ts_args | tojson)) ~ "
        + call_tail
        + "] -%}",
        "{%- endfor -%}",
        "{%- set ts_ns.turns = ts_ns.turns + [{'role': 'assistant', 'content': ts_call.parts | join('\\n')}] -%}",
        "{%- else -%}{%- set ts_ns.turns = ts_ns.turns + [{'role': m.role, 'content': m.content or ''}] -%}{%- endif -%}",
        "{%- endif -%}",
        "{%- endfor -%}",
        "{%- if tools -%}",
        "{%- set ts_block = " + head + " ~ (tools | map('tojson') | join('\\n')) ~ " + tail + " -%}",
        "{%- if ts_ns.turns and ts_ns.turns[0].role == 'system' -%}",
        "{%- set ts_first = (ts_ns.turns[0].content ~ '\\n\\n' ~ ts_block) if ts_ns.turns[0].content.strip() else ts_block -%}",
        "{%- set ts_ns.turns = [{'role': 'system', 'content': ts_first}] + ts_ns.turns[1:] -%}",
        "{%- else -%}{%- set ts_ns.turns = [{'role': 'system', 'content': ts_block}] + ts_ns.turns -%}{%- endif -%}",
        "{%- endif -%}",
        "{%- set messages = ts_ns.turns -%}",
        "{%- endif -%}",
        "{%- set tools = none %}",
    ]
    return "".join(tags)


def with_tool_template(template: str) -> str:
    """The model's own Jinja chat template, made to render tools, calls and tool answers exactly as
    tunesmith's tool template (`conversation`) does, and every conversation without them exactly as
    before: what an export writes for a model whose template does not render tools, so vLLM,
    transformers and llama.cpp given `tools=[...]` render what training saw."""
    if TOOL_TEMPLATE_MARK in template:
        return template
    return _preamble() + template


_PLAIN_PROBES = [
    [{"role": "user", "content": "probe user"}],
    [{"role": "system", "content": "probe system"}, {"role": "user", "content": "probe user"}, {"role": "assistant", "content": "probe answer"}],
]


def exported_template(tokenizer: Any) -> str | None:
    """The chat template an export writes so that runtimes render tools as tunesmith does: None when
    the model's own template renders tools (it is kept) or is not one Jinja string; else the template
    with the tool preamble, checked to render plain conversations byte for byte as the original."""
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str) or supports_tools(tokenizer):
        return None
    derived = with_tool_template(template)
    for messages in _PLAIN_PROBES:
        for generation in (True, False):
            ours = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
            theirs = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation, chat_template=derived)
            if ours != theirs:
                return None
    return derived


def conversation(messages: list[dict], tools: list[dict] | None, *, native: bool, trained: list[bool]) -> tuple[list[dict], list[bool], list[dict] | None]:
    """(turns for the template, which turns carry loss, the tools to pass it natively or None)."""
    if native:
        return [template_message(m) for m in messages], trained, tools or None
    turns: list[dict] = []
    flags: list[bool] = []
    for message, trains in zip(messages, trained, strict=True):
        role = message.get("role")
        if role == "tool":
            block = f"<tool_response>\n{message.get('content') or ''}\n</tool_response>"
            if turns and turns[-1].get("_tool_answers"):
                turns[-1]["content"] += "\n" + block
            else:
                turns.append({"role": "user", "content": block, "_tool_answers": True})
                flags.append(False)
            continue
        if role == "assistant" and message.get("tool_calls"):
            blocks = [call_block(c["function"]["name"], c["function"].get("arguments")) for c in message["tool_calls"]]
            text = "\n".join([t for t in [message.get("content") or ""] if t.strip()] + blocks)
            turns.append({"role": "assistant", "content": text})
        else:
            turns.append({"role": role, "content": message.get("content") or ""})
        flags.append(trains)
    turns = [{k: v for k, v in t.items() if k != "_tool_answers"} for t in turns]
    if tools:
        block = tools_system_text(tools)
        if turns and turns[0]["role"] == "system":
            turns[0] = {"role": "system", "content": f"{turns[0]['content']}\n\n{block}" if turns[0]["content"].strip() else block}
        else:
            turns.insert(0, {"role": "system", "content": block})
            flags.insert(0, False)
    return turns, flags, None


# ---------------------------------------------------------------- reading calls back


@dataclass(frozen=True)
class ParsedCall:
    name: str  # "" when the block held no name
    arguments: str  # JSON text when it parsed, else the raw text
    valid_json: bool  # the arguments were a JSON object


_BLOCK = re.compile(re.escape(TOOL_CALL_OPEN) + r"(.*?)(?:" + re.escape(TOOL_CALL_CLOSE) + r"|$)", re.DOTALL)


def _call_from(value: Any) -> ParsedCall | None:
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):  # some models write the arguments as JSON text, as OpenAI's API carries them
        parsed = _arguments(arguments)
        return ParsedCall(value["name"], json.dumps(parsed, ensure_ascii=False) if isinstance(parsed, dict) else arguments, isinstance(parsed, dict))
    return ParsedCall(value["name"], json.dumps(arguments, ensure_ascii=False), isinstance(arguments, dict))


def parse_calls(text: str, tool_names: list[str] | None = None) -> tuple[str, list[ParsedCall]]:
    """(the answer's text without its calls, the calls): `<tool_call>` blocks (the last may be cut
    off by the token limit), or, with tools offered, an answer that is one call object naming one
    of them. A block that is not a JSON call is kept as a call named "" (the model tried, badly)."""
    blocks = list(_BLOCK.finditer(text))
    if blocks:
        calls = []
        for block in blocks:
            body = block.group(1).strip()
            try:
                value = json.loads(body)
            except (ValueError, RecursionError):
                value = None
            calls.append(_call_from(value) or ParsedCall("", body, False))
        content = _BLOCK.sub("", text).strip()
        return content, calls
    if tool_names:
        stripped = text.strip()
        try:
            value = json.loads(stripped) if stripped.startswith("{") else None
        except (ValueError, RecursionError):
            value = None
        call = _call_from(value)
        if call is not None and call.name in tool_names:
            return "", [call]
    return text, []
