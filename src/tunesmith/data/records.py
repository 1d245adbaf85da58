"""The checks of one record already known to be in a format: shared by `data validate` and by the
reader that prepare uses, so both name a problem with the same code (OpenAI cookbook names)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

Severity = Literal["error", "warning"]
Found = list[tuple[str, str, Severity]]
# ShareGPT's role names -> ours.
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


@dataclass(frozen=True)
class _TurnSpec:
    """How one chat format spells its turns, so OpenAI and ShareGPT share one set of checks."""

    list_key: str
    role_key: str
    content_key: str
    roles: dict[str, str]  # the file's role name -> system | user | assistant


TURNS = {
    "messages": _TurnSpec("messages", "role", "content", {"system": "system", "user": "user", "assistant": "assistant"}),
    "sharegpt": _TurnSpec("conversations", "from", "value", SHAREGPT_ROLES),
}
# Fields that must be non-empty text (or, for a label, a number) per non-chat format.
_REQUIRED = {
    "prompt_completion": ("prompt", "completion"),
    "input_output": ("input_text", "output_text"),
    "alpaca": ("instruction", "output"),
    "classification": ("text", "label"),
}
_OPTIONAL_TEXT = {"alpaca": ("input", "system")}


def _check_turns(record: dict, spec: _TurnSpec) -> Found:
    turns = record.get(spec.list_key)
    if not isinstance(turns, list) or not turns:
        return [("missing_messages_list", f"'{spec.list_key}' must be a non-empty list of {{{spec.role_key}, {spec.content_key}}} objects", "error")]
    found: Found = []
    roles = []
    for index, turn in enumerate(turns):
        found += _check_turn(turn, f"{spec.list_key}[{index}]", spec)
        if isinstance(turn, dict) and isinstance(turn.get(spec.role_key), str):
            roles.append(spec.roles.get(turn[spec.role_key]))
    if "assistant" not in roles:
        found.append(("example_missing_assistant_message", "no assistant turn: nothing to learn from", "error"))
    elif "user" not in roles:
        found.append(("missing_user_message", "no user turn: the model learns to answer without a question", "warning"))
    return found


def _check_turn(turn: Any, where: str, spec: _TurnSpec) -> Found:
    if not isinstance(turn, dict):
        return [("message_missing_key", f'{where} is not an object; write {{"{spec.role_key}": ..., "{spec.content_key}": ...}}', "error")]
    found: Found = []
    missing = [key for key in (spec.role_key, spec.content_key) if key not in turn]
    if missing:
        found.append(("message_missing_key", f"{where} has no '{', '.join(missing)}'; every turn needs {spec.role_key} and {spec.content_key}", "error"))
    unknown = sorted(map(str, set(turn) - {spec.role_key, spec.content_key, "weight"}))
    if unknown:
        found.append(
            (
                "message_unrecognized_key",
                f"{where} has key(s) {', '.join(unknown)}; tunesmith reads only {spec.role_key}, {spec.content_key} and weight: remove them",
                "error",
            )
        )
    role = turn.get(spec.role_key)
    if spec.role_key in turn and (not isinstance(role, str) or role not in spec.roles):
        found.append(("unrecognized_role", f"{where}.{spec.role_key} is {json.dumps(role)[:40]}; use one of {', '.join(spec.roles)}", "error"))
    content = turn.get(spec.content_key)
    if spec.content_key in turn and (not isinstance(content, str) or _blank(content)):
        found.append(
            (
                "missing_content",
                f"{where}.{spec.content_key} is empty (or only control characters) or not text; give the turn its text, "
                "remove the turn, or leave the line out with `data prepare --skip-invalid`",
                "error",
            )
        )
    if "weight" in turn and not _is_weight(turn["weight"]):
        found.append(("invalid_weight", f"{where}.weight is {json.dumps(turn['weight'])[:40]}; use 0 (context only) or 1 (trained)", "error"))
    return found


def _blank(text: str) -> bool:
    """Empty once prepare's clean step has repaired it (control characters and terminal escapes
    go): validate calls blank exactly what prepare would drop as empty."""
    from tunesmith.data.clean import normalise_whitespace, repair_unicode

    return not text.strip() or not normalise_whitespace(repair_unicode(text)).strip()


def _is_weight(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and value in (0, 1)


def _check_fields(record: dict, fmt: str) -> Found:
    found: Found = []
    for key in _REQUIRED[fmt]:
        value = record.get(key)
        allowed = (str, int, float) if key == "label" else (str,)
        if isinstance(value, bool) or not isinstance(value, allowed) or _blank(str(value)):
            state = "missing" if key not in record else "empty or not text"
            found.append(
                (
                    "missing_field",
                    f"field '{key}' is {state}; every {fmt} record needs {' and '.join(_REQUIRED[fmt])} as non-empty text: "
                    "fill it in, or leave the line out with `data prepare --skip-invalid`",
                    "error",
                )
            )
    for key in _OPTIONAL_TEXT.get(fmt, ()):
        if key in record and record[key] is not None and not isinstance(record[key], str):
            found.append(("missing_field", f"field '{key}' must be text when present (it is {type(record[key]).__name__})", "error"))
    return found


def check_record(record: dict, fmt: str) -> Found:
    """Every problem of one record already known to be in format `fmt`."""
    return _check_turns(record, TURNS[fmt]) if fmt in TURNS else _check_fields(record, fmt)
