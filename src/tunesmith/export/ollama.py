"""A GGUF export laid out for Ollama: the file and a Modelfile whose TEMPLATE renders the same text as
the model's own (jinja) chat template, with a stop for every end-of-turn token.

Ollama templates are Go text/template, not jinja, so the template is derived, not copied: the jinja
template is rendered with sentinel messages to find each role's prefix and suffix, the generation
prompt and any default system block; then a Go template over .Messages is emitted from those
pieces, and the derived shape is checked against the jinja template on several conversations
before anything is written. Templates that are not of that per-role shape (a turn's text depends on
more than its role and content) are refused with a clear message.

No Ollama server can be installed here, so the check renders the TEMPLATE with Go's own
text/template when `go` is on PATH, else with render_go_template below, a small renderer written for
exactly the constructs go_template emits (no Go template library exists on PyPI).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.errors import UserError

ROLES = ("system", "user", "assistant")
_S, _U1, _A1, _U2 = "Tsmx0sysq", "Tsmx1usrq", "Tsmx2astq", "Tsmx3usrq"
REFUSE_FIX = "export --to gguf and write the Ollama TEMPLATE by hand, or export --to merged and serve it with `tunesmith serve`"


@dataclass
class TemplateShape:
    """What the jinja template puts around each role's content, and around the conversation."""

    prefix: dict[str, str]
    suffix: dict[str, str]
    generation_prompt: str
    # rendered before the first message when that is not a system message (SmolLM2's default system prompt)
    default_head: str = ""
    checked: list[str] = field(default_factory=list)

    def render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        head = self.default_head if messages and messages[0]["role"] != "system" else ""
        body = "".join(self.prefix[m["role"]] + m["content"] + self.suffix[m["role"]] for m in messages)
        return head + body + (self.generation_prompt if add_generation_prompt else "")


def _render(tokenizer: Any, messages: list[dict], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _after(text: str, start: str, what: str) -> str:
    if not text.startswith(start):
        raise UserError(f"the chat template renders {what} differently depending on what follows, which an Ollama TEMPLATE cannot express", fix=REFUSE_FIX)
    return text[len(start) :]


def _split(text: str, sentinel: str, what: str) -> tuple[str, str]:
    if text.count(sentinel) != 1:
        raise UserError(
            f"the chat template does not render {what}'s content as given (it changes or repeats it), so no Ollama TEMPLATE can match it", fix=REFUSE_FIX
        )
    before, _, after = text.partition(sentinel)
    return before, after


def template_shape(tokenizer: Any) -> TemplateShape:
    """Each role's prefix and suffix in the tokenizer's chat template, found with sentinel messages and
    checked on mixed conversations; a UserError when the template is not of that per-role shape."""
    if not getattr(tokenizer, "chat_template", None):
        raise UserError("the tokenizer has no chat_template, so Ollama would get no TEMPLATE", fix="export a run whose model has a chat template")
    user, assistant, system = ({"role": "user", "content": _U1}, {"role": "assistant", "content": _A1}, {"role": "system", "content": _S})
    try:
        t_u = _render(tokenizer, [user], False)
        t_ua = _render(tokenizer, [user, assistant], False)
        t_uau = _render(tokenizer, [user, assistant, {"role": "user", "content": _U2}], False)
        t_su = _render(tokenizer, [system, user], False)
        t_u_gen = _render(tokenizer, [user], True)
    except Exception as error:  # jinja's TemplateError, or raise_exception() inside the template (e.g. "system role not supported")
        raise UserError(
            f"the chat template refuses a plain system / user / assistant conversation, so no Ollama TEMPLATE can match it: {error}", fix=REFUSE_FIX
        ) from None
    head_and_user_prefix, user_suffix = _split(t_u, _U1, "a user message")
    assistant_prefix, assistant_suffix = _split(_after(t_ua, t_u, "a user turn"), _A1, "an assistant message")
    user_prefix, second_user_suffix = _split(_after(t_uau, t_ua, "an assistant turn"), _U2, "a second user message")
    system_prefix, rest = _split(t_su, _S, "a system message")
    between, system_user_suffix = _split(rest, _U1, "a user message after a system message")
    if (
        second_user_suffix != user_suffix
        or system_user_suffix != user_suffix
        or not head_and_user_prefix.endswith(user_prefix)
        or not between.endswith(user_prefix)
    ):
        raise UserError(
            "the chat template renders a user turn differently by its position in the conversation, which an Ollama TEMPLATE cannot express", fix=REFUSE_FIX
        )
    shape = TemplateShape(
        prefix={"system": system_prefix, "user": user_prefix, "assistant": assistant_prefix},
        suffix={"system": between[: len(between) - len(user_prefix)], "user": user_suffix, "assistant": assistant_suffix},
        generation_prompt=_after(t_u_gen, t_u, "the generation prompt"),
        default_head=head_and_user_prefix[: len(head_and_user_prefix) - len(user_prefix)],
    )
    for messages in _probe_conversations():
        for generation in (True, False):
            expected = _render(tokenizer, messages, generation)
            if shape.render(messages, generation) != expected:
                raise UserError(
                    f"the chat template is not of the per-role shape an Ollama TEMPLATE can express: for roles "
                    f"{[m['role'] for m in messages]} it renders {expected!r}, the per-role pieces give {shape.render(messages, generation)!r}",
                    fix=REFUSE_FIX,
                )
        shape.checked.append("/".join(m["role"] for m in messages))
    return shape


def _probe_conversations() -> list[list[dict]]:
    s, u, a = ({"role": r, "content": f"probe {r} {i}"} for r, i in (("system", 0), ("user", 1), ("assistant", 2)))
    u2, a2 = {"role": "user", "content": "probe user\nline 3"}, {"role": "assistant", "content": "probe assistant 4"}
    return [[u], [s, u], [u, a, u2], [s, u, a, u2], [s, u, a, u2, a2], [u, a, u2, a2]]


# ---------------------------------------------------------------- the Go template


def _go(text: str) -> str:
    """A Go interpreted string literal: JSON's escapes (\\n, \\", \\uXXXX for control characters) are Go's too."""
    return json.dumps(text, ensure_ascii=False)


def go_template(shape: TemplateShape) -> str:
    """A Go text/template over Ollama's .Messages that renders what the jinja template renders. Every
    literal is a quoted Go string inside an action, so the {{- trims that lay the template out on lines
    never eat a newline of the chat format. A last assistant message is left open (no suffix, no
    generation prompt): Ollama continues it, as its own templates do."""
    lines = []
    if shape.default_head:
        lines.append(f'{{{{- if .Messages }}}}{{{{ if ne (index .Messages 0).Role "system" }}}}{{{{ {_go(shape.default_head)} }}}}{{{{ end }}}}{{{{ end }}}}')
    lines.append("{{- range $i, $m := .Messages }}")
    lines.append("{{- $last := eq (len (slice $.Messages $i)) 1 }}")
    for n, role in enumerate(ROLES):
        keyword = "if" if n == 0 else "else if"
        suffix = f"{{{{ {_go(shape.suffix[role])} }}}}"
        if role == "assistant":
            suffix = f"{{{{ if not $last }}}}{suffix}{{{{ end }}}}"
        lines.append(f'{{{{- {keyword} eq $m.Role "{role}" }}}}{{{{ {_go(shape.prefix[role])} }}}}{{{{ $m.Content }}}}{suffix}')
    lines.append("{{- end }}")
    lines.append(f'{{{{- if and $last (ne $m.Role "assistant") }}}}{{{{ {_go(shape.generation_prompt)} }}}}{{{{ end }}}}')
    lines.append("{{- end }}")
    return "\n".join(lines)


# ---------------------------------------------------------------- the Modelfile


def write_ollama(
    gguf_file: Path, out_dir: Path, tokenizer: Any, system_prompt: str | None, eot_tokens: list[str | int], temperature: float | None = 0.0
) -> Path:
    """`out_dir` with the GGUF and a Modelfile (FROM, TEMPLATE, SYSTEM when the run used one, a stop per
    end-of-turn token, greedy by default as tunesmith's own check is); the Modelfile path.
    Create the model with ollama_create_command(out_dir, NAME)."""
    gguf_file, out_dir = Path(gguf_file), Path(out_dir)
    template = go_template(template_shape(tokenizer))
    stops = [tokenizer.convert_ids_to_tokens(t) if isinstance(t, int) else t for t in eot_tokens]
    if not stops:
        raise UserError("no end-of-turn token given: Ollama would not stop at the end of the model's turn", fix="pass the run's end-of-turn tokens")
    for text, what in [(template, "TEMPLATE"), (system_prompt or "", "SYSTEM")]:
        if '"""' in text:
            raise UserError(
                f'the Modelfile {what} would contain """, which ends a Modelfile string early', fix="remove the triple quote from the system prompt"
            )
    for stop in stops:
        if not stop or '"' in stop or "\n" in stop:
            raise UserError(f"end-of-turn token {stop!r} cannot be written as a Modelfile stop parameter", fix=REFUSE_FIX)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / gguf_file.name
    if gguf_file.resolve() != target.resolve():
        target.unlink(missing_ok=True)
        try:
            os.link(gguf_file, target)  # same disk: no second copy of the weights
        except OSError:
            shutil.copy2(gguf_file, target)
    lines = [
        "# Written by tunesmith export --to ollama. Create the model with:",
        "#   ollama create NAME -f Modelfile   (in this folder: FROM names the GGUF beside it)",
        f"FROM ./{target.name}",
        f'TEMPLATE """{template}"""',
    ]
    if system_prompt:
        lines.append(f'SYSTEM """{system_prompt}"""')
    lines += [f'PARAMETER stop "{stop}"' for stop in dict.fromkeys(stops)]
    if temperature is not None:
        lines.append(f"PARAMETER temperature {temperature:g}")
    modelfile = out_dir / "Modelfile"
    modelfile.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return modelfile


def ollama_create_command(out_dir: Path, name: str) -> list[str]:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:/-]*", name):
        raise UserError(f"'{name}' is not a valid Ollama model name", fix="use letters, digits, '.', '-', '_', ':' and '/'")
    return ["ollama", "create", name, "-f", str(Path(out_dir) / "Modelfile")]


_MODELFILE_STRING = re.compile(r'^(TEMPLATE|SYSTEM) """(.*?)"""$', re.S | re.M)


def read_modelfile(modelfile: Path) -> dict[str, Any]:
    """FROM, TEMPLATE, SYSTEM and PARAMETERs of a Modelfile written by write_ollama."""
    text = Path(modelfile).read_text(encoding="utf-8")
    found: dict[str, Any] = {"parameters": []}
    for key, value in _MODELFILE_STRING.findall(text):
        found[key.lower()] = value
    for line in _MODELFILE_STRING.sub("", text).splitlines():
        if line.startswith("FROM "):
            found["from"] = line[5:].strip()
        elif line.startswith("PARAMETER "):
            name, _, value = line[10:].partition(" ")
            found["parameters"].append((name, json.loads(value) if value.startswith('"') else value))
    return found


# ---------------------------------------------------------------- `tunesmith export --to ollama`


def ollama_model_name(source: Any) -> str:
    """A name `ollama create` takes: the run's name, else its id, lower-cased, other characters as '-'."""
    raw = (source.spec.name or source.run_id).lower()
    return re.sub(r"[^a-z0-9._-]+", "-", raw).strip("-._") or "tunesmith-model"


def check_ollama(source: Any, options: Any) -> None:
    from tunesmith.export.gguf import check_gguf
    from tunesmith.models.loading import load_tokenizer

    check_gguf(source, options)
    template_shape(load_tokenizer(str(source.artefact)))  # a template Ollama cannot express is refused before any writing


def write_ollama_target(source: Any, folder: Path, options: Any) -> Any:
    """The GGUF (as `--to gguf` writes it) and a Modelfile beside it, for `ollama create`."""
    from tunesmith.chat_template import end_of_turn_ids
    from tunesmith.export.gguf import write_gguf
    from tunesmith.models.loading import load_tokenizer

    written = write_gguf(source, folder, options)
    tokenizer = load_tokenizer(str(source.artefact))
    modelfile = write_ollama(folder / written.details["file"], folder, tokenizer, source.system_prompt, end_of_turn_ids(tokenizer))
    command = ollama_create_command(options.out, ollama_model_name(source))
    written.runtime = "ollama"
    written.usage = f"{' '.join(command)}  then  ollama run {command[2]}"
    parsed = read_modelfile(modelfile)
    written.details.update(
        modelfile=modelfile.name, ollama_create=command, stops=[v for k, v in parsed["parameters"] if k == "stop"], system=parsed.get("system")
    )
    return written


def answer_ollama(folder: Path, written: Any, conversations: list[list[dict]], max_new_tokens: int, batch_size: int) -> list[Any]:
    """What Ollama would answer, as near as can be run here: the prompt rendered by the Modelfile's
    TEMPLATE (Go's text/template when `go` is installed) with its SYSTEM prepended as Ollama does, the
    GGUF run by llama.cpp (Ollama's own engine), stopping at the Modelfile's stops or end-of-generation."""
    from tunesmith.export.gguf import llamacpp_chat_answers

    parsed = read_modelfile(folder / written.details["modelfile"])
    system = parsed.get("system")
    messages = [[{"role": "system", "content": system}, *c] if system and c and c[0]["role"] != "system" else c for c in conversations]
    go = shutil.which("go")
    prompts = render_with_go(parsed["template"], messages) if go else [render_go_template(parsed["template"], {"Messages": m}) for m in messages]
    written.details["template_rendered_with"] = _go_version(go) if go else "tunesmith's renderer for the emitted Go template constructs (no `go` here)"
    stops = [v for k, v in parsed["parameters"] if k == "stop"]
    return llamacpp_chat_answers(folder / written.details["file"], conversations, max_new_tokens, prompts=prompts, stops=stops)


# ---------------------------------------------------------------- checking the TEMPLATE (no Ollama server here)


def check_template(modelfile: Path, tokenizer: Any, conversations: list[list[dict]], use_go: bool | None = None) -> dict[str, Any]:
    """Render the Modelfile's TEMPLATE for each conversation as Ollama would (its SYSTEM first when the
    conversation has none) and compare with the tokenizer's chat template ready for the assistant's turn.
    Figures: how many were identical, which renderer, and the first difference."""
    parsed = read_modelfile(modelfile)
    system = parsed.get("system")
    # Ollama prepends the Modelfile's SYSTEM as a system message when the request has none.
    ollama_messages = [[{"role": "system", "content": system}, *c] if system and c and c[0]["role"] != "system" else c for c in conversations]
    go = shutil.which("go") if use_go is not False else None
    if use_go and not go:
        raise UserError("`go` is not on PATH", fix="apt-get install golang-go, or check with the built-in renderer")
    rendered = render_with_go(parsed["template"], ollama_messages) if go else [render_go_template(parsed["template"], {"Messages": m}) for m in ollama_messages]
    expected = [_render(tokenizer, m, True) for m in ollama_messages]
    same = [r == e for r, e in zip(rendered, expected)]
    first = next((i for i, ok in enumerate(same) if not ok), None)
    return {
        "renderer": _go_version(go) if go else "tunesmith's renderer for the emitted Go template constructs",
        "conversations": len(conversations),
        "identical": sum(same),
        "first_difference": None if first is None else {"index": first, "ollama": rendered[first], "chat_template": expected[first]},
        "not_checked": "no Ollama server here: the model was not created nor run in Ollama",
    }


def _go_version(go: str) -> str:
    done = subprocess.run([go, "version"], capture_output=True, text=True)
    return f"Go text/template ({done.stdout.strip()})"


_GO_PROGRAM = """package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

// The fields of Ollama's api.Message and template Values that a TEMPLATE reads.
type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type Values struct {
	Messages []Message
	System   string
	Prompt   string
	Response string
}

func main() {
	source, err := os.ReadFile(os.Args[1])
	if err != nil {
		panic(err)
	}
	tmpl := template.Must(template.New("").Option("missingkey=zero").Parse(string(source)))
	var conversations [][]Message
	if err := json.NewDecoder(os.Stdin).Decode(&conversations); err != nil {
		panic(err)
	}
	out := []string{}
	for _, messages := range conversations {
		var b strings.Builder
		if err := tmpl.Execute(&b, Values{Messages: messages}); err != nil {
			panic(err)
		}
		out = append(out, b.String())
	}
	json.NewEncoder(os.Stdout).Encode(out)
}
"""


def render_with_go(template: str, conversations: list[list[dict]]) -> list[str]:
    """The template rendered by Go's own text/template (a throwaway program, stdlib only, offline)."""
    go = shutil.which("go")
    if not go:
        raise UserError("`go` is not on PATH", fix="apt-get install golang-go")
    with tempfile.TemporaryDirectory(prefix="tunesmith-gotemplate-") as tmp:
        (Path(tmp) / "main.go").write_text(_GO_PROGRAM, encoding="utf-8")
        (Path(tmp) / "template.txt").write_text(template, encoding="utf-8")
        env = {
            **os.environ,
            "GO111MODULE": "off",
            "GOFLAGS": "",
            "GOPROXY": "off",
            "GOCACHE": os.environ.get("GOCACHE") or str(Path(tempfile.gettempdir()) / "tunesmith-gocache"),
        }
        done = subprocess.run([go, "run", "main.go", "template.txt"], cwd=tmp, input=json.dumps(conversations), capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise UserError(f"Go's text/template could not render the TEMPLATE:\n{done.stderr.strip()[-2000:]}", fix=REFUSE_FIX)
    return json.loads(done.stdout)


# ---------------------------------------------------------------- a Go text/template renderer for what go_template emits


_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)
_TOKEN = re.compile(
    r'\s*("(?:[^"\\]|\\.)*"|\(|\)|\$[A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*|(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.|:=|,|[A-Za-z_][A-Za-z0-9_]*|-?[0-9]+)'
)


def render_go_template(template: str, data: dict[str, Any]) -> str:
    """Go text/template semantics for the subset go_template emits: {{- -}} trims, string literals,
    .Field and $var.Field, if / else if / else / end, range $i, $v := ..., $x := ..., and the builtins
    eq ne and or not len slice index. Anything else raises, so a TEMPLATE beyond it is never half-rendered."""
    nodes, _ = _parse(_lex(template), 0, ())
    out: list[str] = []
    _execute(nodes, {"$": data}, data, out)
    return "".join(out)


def _lex(template: str) -> list[tuple[str, str]]:
    items: list[tuple[str, str]] = []
    position, trim_next = 0, False
    for match in _ACTION.finditer(template):
        text = template[position : match.start()]
        if trim_next:
            text = text.lstrip(" \t\r\n")
        if match.group(1):
            text = text.rstrip(" \t\r\n")
        if text:
            items.append(("text", text))
        items.append(("action", match.group(2)))
        trim_next, position = bool(match.group(3)), match.end()
    tail = template[position:]
    if trim_next:
        tail = tail.lstrip(" \t\r\n")
    if tail:
        items.append(("text", tail))
    return items


def _parse(items: list[tuple[str, str]], i: int, stops: tuple[str, ...]) -> tuple[list, int]:
    nodes: list = []
    while i < len(items):
        kind, body = items[i]
        if kind == "text":
            nodes.append(("text", body))
            i += 1
            continue
        word = body.split(None, 1)[0] if body else ""
        if word in stops or (body.startswith("else") and "else" in stops):
            return nodes, i
        if word == "if":
            branches, i = [], i
            condition = body[2:]
            while True:
                block, i = _parse(items, i + 1, ("end", "else"))
                branches.append((condition, block))
                _, closing = items[i]
                if closing == "end":
                    break
                condition = closing[len("else if") :] if closing.startswith("else if") else "true"
            nodes.append(("if", branches))
            i += 1
        elif word == "range":
            head = re.fullmatch(r"range\s+(\$\w+)\s*,\s*(\$\w+)\s*:=\s*(.+)", body, re.S)
            if not head:
                raise ValueError(f"unsupported range form: {body}")
            block, i = _parse(items, i + 1, ("end",))
            nodes.append(("range", head.groups(), block))
            i += 1
        elif re.match(r"\$\w+\s*:=", body):
            name, _, expr = body.partition(":=")
            nodes.append(("assign", name.strip(), expr))
            i += 1
        else:
            nodes.append(("print", body))
            i += 1
    if stops:
        raise ValueError("unclosed {{ if }} or {{ range }}")
    return nodes, i


def _execute(nodes: list, scope: dict[str, Any], dot: Any, out: list[str]) -> None:
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "print":
            value = _evaluate(node[1], scope, dot)
            out.append("" if value is None else str(value))
        elif node[0] == "assign":
            scope[node[1]] = _evaluate(node[2], scope, dot)
        elif node[0] == "if":
            for condition, block in node[1]:
                if condition == "true" or _truthy(_evaluate(condition, scope, dot)):
                    _execute(block, dict(scope), dot, out)
                    break
        elif node[0] == "range":
            (index_name, value_name, source), block = node[1], node[2]
            for index, value in enumerate(_evaluate(source, scope, dot) or []):
                _execute(block, {**scope, index_name: index, value_name: value}, value, out)


def _truthy(value: Any) -> bool:
    return bool(value)


def _evaluate(expression: str, scope: dict[str, Any], dot: Any) -> Any:
    tokens = _tokens(expression)
    value, rest = _pipeline(tokens, scope, dot)
    if rest:
        raise ValueError(f"unsupported template expression: {expression}")
    return value


def _tokens(expression: str) -> list[str]:
    tokens, position = [], 0
    expression = expression.strip()
    while position < len(expression):
        match = _TOKEN.match(expression, position)
        if not match:
            raise ValueError(f"unsupported template syntax at: {expression[position:]}")
        tokens.append(match.group(1))
        position = match.end()
        while position < len(expression) and expression[position].isspace():
            position += 1
    return tokens


def _pipeline(tokens: list[str], scope: dict[str, Any], dot: Any) -> tuple[Any, list[str]]:
    """A command: a function applied to the operands that follow it, or a single operand."""
    if tokens and tokens[0] in _FUNCTIONS:
        name, tokens = tokens[0], tokens[1:]
        args = []
        while tokens and tokens[0] != ")":
            value, tokens = _operand(tokens, scope, dot)
            args.append(value)
        return _FUNCTIONS[name](*args), tokens
    return _operand(tokens, scope, dot)


def _operand(tokens: list[str], scope: dict[str, Any], dot: Any) -> tuple[Any, list[str]]:
    token, tokens = tokens[0], tokens[1:]
    if token == "(":
        value, tokens = _pipeline(tokens, scope, dot)
        if not tokens or tokens[0] != ")":
            raise ValueError("unbalanced parentheses")
        tokens = tokens[1:]
        while tokens and tokens[0].startswith(".") and tokens[0] != ".":  # (index .Messages 0).Role
            value, tokens = _field(value, tokens[0]), tokens[1:]
        return value, tokens
    if token.startswith('"'):
        return json.loads(token), tokens
    if re.fullmatch(r"-?[0-9]+", token):
        return int(token), tokens
    if token.startswith("$"):
        name, _, fields = token.partition(".")
        if name not in scope:
            raise ValueError(f"undefined variable {name}")
        return _field(scope[name], "." + fields) if fields else scope[name], tokens
    if token == ".":
        return dot, tokens
    if token.startswith("."):
        return _field(dot, token), tokens
    raise ValueError(f"unsupported operand {token}")


def _field(value: Any, path: str) -> Any:
    for name in filter(None, path.split(".")):
        if isinstance(value, dict):
            # Ollama's api.Message fields are Role and Content; the conversations here use role and content
            value = value.get(name, value.get(name.lower()))
        else:
            value = getattr(value, name)
    return value


def _index(value: Any, *keys: Any) -> Any:
    for key in keys:
        if isinstance(value, list) and not 0 <= key < len(value):
            raise IndexError(f"index out of range: {key}")
        value = value[key]
    return value


def _and(*args: Any) -> Any:
    for arg in args:
        if not _truthy(arg):
            return arg
    return args[-1]


def _or(*args: Any) -> Any:
    for arg in args:
        if _truthy(arg):
            return arg
    return args[-1]


_FUNCTIONS = {
    "eq": lambda a, *b: any(a == x for x in b),
    "ne": lambda a, b: a != b,
    "and": _and,
    "or": _or,
    "not": lambda a: not _truthy(a),
    "len": len,
    "slice": lambda value, low=None, high=None: value[low:high],  # Go's slice x 1 is x[1:]
    "index": _index,
}
