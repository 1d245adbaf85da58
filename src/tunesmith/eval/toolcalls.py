"""Metrics for tool calling (docs/tools.md): did the model call when it should, the right tool, with
the right arguments, and arguments its schema accepts?

Answers are read back with the renderer's own parser (chat_template.tools.parse_calls), the one
serving uses, and references are the expected calls written as the tool template writes them
(`reference_text`), so `eval score` on a predictions file scores the same way as `tunesmith eval`.

Per example (the keys the comparisons pair up; a key is absent where it does not apply):
- tool_name_accuracy: the call(s) name the expected tool(s) (as multisets; parallel calls in any order);
- tool_arguments_exact_match: the same calls with JSON-equal arguments;
- tool_arguments_schema_valid: the share of the answer's calls whose arguments are a JSON object
  the declared tool's parameters schema accepts (needs the tools; a call to an undeclared tool is invalid);
- tool_missed_call: 1 when a call was expected and the model answered in text;
- tool_unwanted_call: 1 when a text answer was expected and the model called a tool.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from tunesmith.chat_template.tools import ParsedCall, call_block, parse_calls
from tunesmith.data.example import Example
from tunesmith.data.toolcalls import schema_problem

TOOL_METRICS = ("tool_name_accuracy", "tool_arguments_exact_match", "tool_arguments_schema_valid", "tool_missed_call", "tool_unwanted_call")
LOWER_IS_BETTER = ("tool_missed_call", "tool_unwanted_call")


def reference_text(example: Example) -> str | None:
    """What the model should answer: the final assistant turn's text, or its calls as the tool template writes them."""
    calls = example.reference_calls
    if not calls:
        return example.reference
    blocks = [call_block(c.function.name, c.function.arguments) for c in calls]
    return "\n".join([t for t in [example.reference or ""] if t.strip()] + blocks)


def is_tool_task(references: list[str]) -> bool:
    return any(parse_calls(r)[1] for r in references)


def _key(call: ParsedCall) -> str:
    try:
        arguments = json.loads(call.arguments)
    except (ValueError, RecursionError):
        arguments = call.arguments
    return json.dumps([call.name, arguments], sort_keys=True, ensure_ascii=False)


def score_calls(prediction: str, reference: str, tools: list[dict] | None = None) -> dict[str, float]:
    """One example's tool-calling values (see the module's docstring)."""
    names = [t["function"]["name"] for t in tools or ()]
    _, expected = parse_calls(reference, names)
    _, made = parse_calls(prediction, names)
    row: dict[str, float] = {}
    if expected:
        row["tool_missed_call"] = float(not made)
        row["tool_name_accuracy"] = float(Counter(c.name for c in made) == Counter(c.name for c in expected))
        row["tool_arguments_exact_match"] = float(Counter(map(_key, made)) == Counter(map(_key, expected)))
    else:
        row["tool_unwanted_call"] = float(bool(made))
    if made and tools is not None:
        schemas = {t["function"]["name"]: t["function"].get("parameters") for t in tools}
        row["tool_arguments_schema_valid"] = sum(_schema_valid(c, schemas) for c in made) / len(made)
    return row


def _schema_valid(call: ParsedCall, schemas: dict[str, dict | None]) -> bool:
    if not call.valid_json or call.name not in schemas:
        return False
    return schema_problem(schemas[call.name], json.loads(call.arguments)) is None


def tool_call_metrics(preds: list[str], refs: list[str], opts: dict[str, Any]) -> dict[str, float]:
    """The mean of each per-example value over the examples it applies to."""
    tools = opts.get("tools") or [None] * len(preds)
    rows = [score_calls(p, r, t) for p, r, t in zip(preds, refs, tools)]
    out = {}
    for name in TOOL_METRICS:
        values = [row[name] for row in rows if name in row]
        if values:
            out[name] = sum(values) / len(values)
    return out
