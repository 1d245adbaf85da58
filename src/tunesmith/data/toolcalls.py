"""Function calling in chat records: OpenAI's `tools` / `tool_calls` / `role: "tool"` form and
the legacy `functions` / `function_call` / `role: "function"` one, read into one shape and
checked (docs/tools.md).

`normalise` rewrites a record's legacy form into the current one (a legacy call gets the id
`call_<message index>`, and a `function` answer the id of the latest unanswered call of that
name), so validation, prepare and training see one representation. `check_calls` lists every
problem of the calls with its code: the same list `data validate` prints and `prepare` refuses.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any, Literal

# (code, message, severity), as data.records lists a record's problems (which imports this module).
Found = list[tuple[str, str, Literal["error", "warning"]]]

# Message keys the chat format reads besides role, content and weight.
TOOL_MESSAGE_KEYS = frozenset({"tool_calls", "tool_call_id", "function_call", "name"})
TOOL_ROLES = ("tool", "function")
RECORD_TOOL_KEYS = ("tools", "functions", "parallel_tool_calls")


def has_tools(record: dict) -> bool:
    """Whether a chat record uses function calling at all (most do not: they skip every check here)."""
    if any(key in record for key in RECORD_TOOL_KEYS):
        return True
    messages = record.get("messages")
    return isinstance(messages, list) and any(
        isinstance(m, dict) and (m.get("role") in TOOL_ROLES or any(key in m for key in TOOL_MESSAGE_KEYS)) for m in messages
    )


def normalise(record: dict) -> dict:
    """The record with legacy `functions` / `function_call` / `role: function` rewritten as tools,
    tool_calls and tool turns; anything malformed is passed through for `check_calls` to name."""
    if not has_tools(record):
        return record
    out = dict(record)
    if "functions" in record and "tools" not in record and isinstance(record["functions"], list):
        out["tools"] = [{"type": "function", "function": f} for f in record["functions"]]
        del out["functions"]
    messages = record.get("messages")
    if not isinstance(messages, list):
        return out
    pending: dict[str, list[str]] = {}  # legacy function name -> ids of its calls not yet answered
    rewritten = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            rewritten.append(message)
            continue
        message = dict(message)
        call = message.get("function_call")
        if isinstance(call, dict) and "tool_calls" not in message:
            call_id = f"call_{index}"
            message["tool_calls"] = [{"id": call_id, "type": "function", "function": call}]
            del message["function_call"]
            if isinstance(call.get("name"), str):
                pending.setdefault(call["name"], []).append(call_id)
        if message.get("role") == "function":
            name = message.pop("name", None)
            message["role"] = "tool"
            ids = pending.get(name) if isinstance(name, str) else None
            message["tool_call_id"] = ids.pop(0) if ids else f"unmatched:{name}"
        elif message.get("role") == "tool":
            message.pop("name", None)  # older tool answers carry the function's name; the id is what links them
        if message.get("role") == "assistant" and message.get("tool_calls") and message.get("content") is None:
            message["content"] = ""
        rewritten.append(message)
    out["messages"] = rewritten
    return out


@lru_cache(maxsize=256)
def _validator(schema_json: str) -> Any:
    import jsonschema

    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def schema_validator(parameters: dict[str, Any] | None) -> Any:
    """A jsonschema validator for a function's parameters (an empty schema accepts any object)."""
    return _validator(json.dumps(parameters or {"type": "object"}, sort_keys=True))


def schema_problem(parameters: dict[str, Any] | None, arguments: Any) -> str | None:
    """Why `arguments` do not match the parameters schema, or None when they do."""
    import jsonschema

    errors = list(schema_validator(parameters).iter_errors(arguments))
    if not errors:
        return None
    worst = jsonschema.exceptions.best_match(errors)
    where = "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in worst.absolute_path)
    return f"{('arguments' + where) if where else 'arguments'}: {worst.message}"


def _declared(record: dict, found: Found) -> dict[str, dict | None] | None:
    """Declared function name -> parameters schema; None when the record declares no tools."""
    tools = record.get("tools")
    if tools is None:
        return None
    if not isinstance(tools, list) or not tools:
        found.append(("invalid_tools", "'tools' must be a non-empty list of {type: function, function: {name, description, parameters}}", "error"))
        return {}
    declared: dict[str, dict | None] = {}
    for index, tool in enumerate(tools):
        where = f"tools[{index}]"
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(function, dict):
            found.append(("invalid_tools", f'{where} is not {{"type": "function", "function": {{"name": ..., "parameters": {{...}}}}}}', "error"))
            continue
        unknown = sorted(map(str, set(function) - {"name", "description", "parameters", "strict"}))
        name = function.get("name")
        parameters = function.get("parameters")
        if not isinstance(name, str) or not name:
            found.append(("invalid_tools", f"{where}.function.name is missing or not text; every function needs a name", "error"))
        elif name in declared:
            found.append(("invalid_tools", f"{where} declares '{name}' a second time; each function once", "error"))
        elif unknown:
            found.append(
                ("invalid_tools", f"{where}.function has key(s) {', '.join(unknown)}; a function has name, description, parameters and strict", "error")
            )
        elif parameters is not None and not isinstance(parameters, dict):
            found.append(("invalid_tools", f"{where}.function.parameters must be a JSON schema object", "error"))
        else:
            try:
                schema_validator(parameters)
            except Exception as exc:  # jsonschema's SchemaError, or a schema it cannot even build
                found.append(("invalid_tools", f"{where}.function.parameters is not a valid JSON schema ({str(exc).splitlines()[0][:120]})", "error"))
                continue
            declared[name] = parameters
    return declared


def check_calls(record: dict) -> Found:
    """Every function-calling problem of a chat record (already normalised or not)."""
    if not has_tools(record):
        return []
    found: Found = []
    if "functions" in record and "tools" in record:
        found.append(("invalid_tools", "the record has both 'tools' and legacy 'functions'; keep one (tools is OpenAI's current form)", "error"))
    parallel = record.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        found.append(("invalid_tools", "'parallel_tool_calls' must be true or false", "error"))
    record = normalise(record)
    declared = _declared(record, found)
    messages = record.get("messages")
    if not isinstance(messages, list):
        return found
    seen_ids: set[str] = set()
    unanswered: dict[str, int] = {}  # call id -> index of the message that made it
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            continue
        where = f"messages[{index}]"
        role = message.get("role")
        if "tool_calls" in message:
            if role != "assistant":
                found.append(("invalid_tool_call", f"{where} ({role}) has tool_calls; only assistant turns call tools", "error"))
                continue
            found += _check_message_calls(message.get("tool_calls"), where, declared, seen_ids, unanswered, index, parallel)
        if role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                found.append(("tool_result_unmatched", f"{where} is a tool answer without a tool_call_id; name the call it answers", "error"))
            elif call_id.startswith("unmatched:"):
                found.append(
                    (
                        "tool_result_unmatched",
                        f"{where} answers function '{call_id[10:]}', which no earlier assistant turn called (or it was answered already)",
                        "error",
                    )
                )
            elif call_id not in unanswered:
                what = "was answered already" if call_id in seen_ids else "matches no earlier assistant tool call"
                found.append(("tool_result_unmatched", f"{where}.tool_call_id '{call_id[:60]}' {what}; each tool answer follows the call it answers", "error"))
            else:
                del unanswered[call_id]
            if "tool_calls" in message:
                continue
        elif "tool_call_id" in message:
            found.append(("invalid_tool_call", f"{where} ({role}) has a tool_call_id; only tool answers carry one", "error"))
        if role == "assistant" and unanswered and not message.get("tool_calls") and index > min(unanswered.values()):
            left = ", ".join(sorted(unanswered))[:80]
            found.append(("tool_call_unanswered", f"{where} answers before the tool call(s) {left} got their result; add the tool turn(s) first", "warning"))
            unanswered.clear()
    return found


def _check_message_calls(
    calls: Any, where: str, declared: dict[str, dict | None] | None, seen_ids: set[str], unanswered: dict[str, int], index: int, parallel: Any
) -> Found:
    if not isinstance(calls, list) or not calls:
        return [("invalid_tool_call", f"{where}.tool_calls must be a non-empty list of {{id, type: function, function: {{name, arguments}}}}", "error")]
    found: Found = []
    if parallel is False and len(calls) > 1:
        found.append(
            ("parallel_tool_calls", f"{where} makes {len(calls)} calls at once but the record sets parallel_tool_calls false; one call a turn", "error")
        )
    for number, call in enumerate(calls):
        at = f"{where}.tool_calls[{number}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(call, dict) or call.get("type", "function") != "function" or not isinstance(function, dict):
            found.append(("invalid_tool_call", f'{at} is not {{"id": ..., "type": "function", "function": {{"name": ..., "arguments": "..."}}}}', "error"))
            continue
        unknown = sorted(map(str, set(call) - {"id", "type", "function"})) + sorted(map(str, set(function) - {"name", "arguments"}))
        if unknown:
            found.append(("invalid_tool_call", f"{at} has key(s) {', '.join(unknown)}; a call has id, type and function {{name, arguments}}", "error"))
        call_id = call.get("id")
        if not isinstance(call_id, str) or not call_id:
            found.append(("invalid_tool_call", f"{at}.id is missing; give every call an id its tool answer names", "error"))
        elif call_id in seen_ids:
            found.append(
                ("duplicate_tool_call_id", f"{at}.id '{call_id[:60]}' is used by an earlier call; call ids must be unique in the conversation", "error")
            )
        else:
            seen_ids.add(call_id)
            unanswered[call_id] = index
        name = function.get("name")
        if not isinstance(name, str) or not name:
            found.append(("invalid_tool_call", f"{at}.function.name is missing; name the function called", "error"))
            continue
        if declared is None:
            found.append(("undeclared_tool", f"{at} calls '{name}' but the record declares no tools; add it to 'tools'", "error"))
        elif name not in declared:
            known = ", ".join(sorted(declared)) or "none"
            found.append(("undeclared_tool", f"{at} calls '{name}', which 'tools' does not declare (declared: {known[:80]})", "error"))
        found += _check_arguments(function.get("arguments"), at, (declared or {}).get(name))
    return found


def _check_arguments(arguments: Any, at: str, parameters: dict | None) -> Found:
    if not isinstance(arguments, str):
        return [("tool_arguments_not_json", f"{at}.function.arguments must be JSON text (a string), as OpenAI sends it: json.dumps the object", "error")]
    try:
        parsed = json.loads(arguments)
    except (ValueError, RecursionError) as exc:
        return [("tool_arguments_not_json", f"{at}.function.arguments is not valid JSON ({str(exc)[:80]}): {arguments[:60]!r}", "error")]
    if not isinstance(parsed, dict):
        return [("tool_arguments_not_json", f"{at}.function.arguments must be a JSON object, not {type(parsed).__name__}", "error")]
    problem = schema_problem(parameters, parsed)
    return [("tool_arguments_schema", f"{at}.function.{problem}; make them match the function's parameters schema", "error")] if problem else []
