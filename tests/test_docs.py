"""The README and the user docs say what the command line accepts.

Every `tunesmith ...` command line inside a fenced code block of README.md and of the user docs
is parsed by the real Click command (no command runs): an unknown option, a missing argument or a
wrong subcommand fails with the doc file and line named. README stays the short path (at most
170 lines) and links each topic page, and every file it links exists.

How the docs write command lines (the convention this test reads):
- a line in a ``` fence is a command when, after optional `NAME=value` environment prefixes, it
  starts with `tunesmith`, or when it runs `-m tunesmith` (`python -m`, `accelerate launch ... -m`);
- a `\\` at the end of a line continues it on the next; `#` starts a comment (shell rules);
  the command ends at a `|`, `&&`, `||`, `;` or `>` standing alone;
- placeholders are UPPER_CASE words (RUN_ID, FILE), which parse as they are, or `<words>`,
  read as one word `X`; `[--option value]` is an optional part, checked as if given;
  `a|b` inside a word (`--pairwise base|OTHER_RUN`) is one value.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer.main

try:  # typer 0.2x carries its own copy of Click; its commands raise that copy's errors
    from typer._click.exceptions import UsageError
except ImportError:  # pragma: no cover - older typer, on the installed Click
    from click.exceptions import UsageError
try:
    from typer.exceptions import Exit  # what `--help` raises
except ImportError:  # pragma: no cover
    from click.exceptions import Exit

from tunesmith.cli import app

ROOT = Path(__file__).resolve().parents[1]
TOPICS = [
    "docs/data.md",
    "docs/training.md",
    "docs/multi-process.md",
    "docs/evaluation.md",
    "docs/export-serve.md",
    "docs/serve.md",
    "docs/api.md",
    "docs/api-keys.md",
    "docs/ray.md",
    "docs/tools.md",
    "docs/preference.md",
    "docs/monitoring.md",
    "docs/dashboard.md",
    "docs/tune.md",
    "docs/forgetting.md",
]
CHECKED = ["README.md", *TOPICS]
README_MAX_LINES = 200
# Linked from README, written on another branch of issue 15; drop a name once its file is merged.

FENCE = re.compile(r"^\s*(```|~~~)")
ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
ANGLE = re.compile(r"<[^<>\n]*>")
OPTIONAL = re.compile(r"\[(\s*-[^\[\]]*)\]")
SHELL_ENDS = {"|", "||", "&&", ";", ">", ">>", "2>", "&"}
LINK = re.compile(r"\]\(([^()\s]+)\)")


def command_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, joined text) of each line inside a fenced block, continuations joined."""
    found: list[tuple[int, str]] = []
    in_fence = False
    pending: tuple[int, str] | None = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if FENCE.match(line):
            in_fence = not in_fence
            pending = None
            continue
        if not in_fence:
            continue
        start, text = pending if pending else (number, "")
        text += line
        if text.rstrip().endswith("\\"):
            pending = (start, text.rstrip()[:-1] + " ")
            continue
        pending = None
        found.append((start, text))
    return found


def tunesmith_args(text: str) -> list[str] | None:
    """The words after `tunesmith` on a doc line, placeholders filled; None when it runs no tunesmith."""
    text = OPTIONAL.sub(r"\1", ANGLE.sub("X", text))
    words = shlex.split(text, comments=True)
    for index, word in enumerate(words):
        if word in SHELL_ENDS:
            words = words[:index]
            break
    while words and ENV.match(words[0]):
        words = words[1:]
    if words and words[0] == "tunesmith":
        return words[1:]
    for index in range(len(words) - 1):
        if words[index] == "-m" and words[index + 1] == "tunesmith":
            return words[index + 2 :]
    return None


def doc_commands() -> list[tuple[str, int, str, list[str]]]:
    commands = []
    for name in CHECKED:
        for number, text in command_lines(ROOT / name):
            args = tunesmith_args(text)
            if args is not None:
                commands.append((name, number, text.strip(), args))
    return commands


def as_main_rewrites(root, words: list[str]) -> list[str]:
    """What `tunesmith.cli.main` does to the command line before Click parses it."""
    from tunesmith.data.formats import expand_map_args

    words = [w for w in words if w != "--trust-remote-code"]  # main accepts it after any command
    return expand_map_args(words)


def is_group(command) -> bool:
    """A command with subcommands (Click's Group, or typer's group on its own copy of Click)."""
    return hasattr(command, "resolve_command")


def parse(words: list[str]) -> str:
    """Parse a command line with the real CLI, group by group down to the leaf; return the command path.

    Raises UsageError (unknown option or subcommand, missing or bad argument)."""
    root = typer.main.get_command(app)
    command = root
    prog = "tunesmith"
    args = as_main_rewrites(root, list(words))
    while True:
        try:
            ctx = command.make_context(prog, list(args))
        except Exit:  # `--help`: a valid line
            return prog
        if not is_group(command):
            return prog
        protected = getattr(ctx, "_protected_args", None)
        rest = [*(ctx.protected_args if protected is None else protected), *ctx.args]
        if not rest and getattr(command, "invoke_without_command", False):  # a group that runs on its own
            return prog
        name, sub, args = command.resolve_command(ctx, rest)
        assert sub is not None and name is not None
        command, prog = sub, f"{prog} {name}"


COMMANDS = doc_commands()


@pytest.mark.parametrize(("doc", "line", "text", "words"), COMMANDS, ids=[f"{d}:{n}" for d, n, _, _ in COMMANDS])
def test_doc_command_parses(doc: str, line: int, text: str, words: list[str]) -> None:
    try:
        parse(words)
    except UsageError as exc:
        pytest.fail(f"{doc}:{line}: `{text}` does not parse: {exc.format_message()}", pytrace=False)


def test_every_checked_doc_has_commands() -> None:
    """A fence or placeholder the reader misses would skip a file's commands silently."""
    per_doc = {name: sum(1 for d, *_ in COMMANDS if d == name) for name in CHECKED}
    assert all(per_doc.values()), per_doc


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("tunesmith train --data my-data --no-such-flag", "No such option"),
        ("tunesmith generate --prompt hi", "Missing argument"),
        ("tunesmith data prepera my.jsonl", "No such command"),
        ("tunesmith runs", ""),  # a group alone prints its help, an error
        ("tunesmith eval judge RUN --judge-modle NAME", "No such option"),
        ("TUNESMITH_HOME=/tmp/x tunesmith train \\\n  --max-time soon", "Invalid value for '--max-time'"),
    ],
)
def test_a_broken_line_fails(line: str, message: str) -> None:
    args = tunesmith_args(line.replace("\\\n", " "))
    assert args is not None
    with pytest.raises(UsageError) as caught:
        parse(args)
    assert message in caught.value.format_message()


def test_conventions_are_read() -> None:
    assert tunesmith_args("FOO=1 BAR=x tunesmith runs list  # every run") == ["runs", "list"]
    assert tunesmith_args("accelerate launch --config_file f.yaml -m tunesmith train --config r.yaml") == ["train", "--config", "r.yaml"]
    assert tunesmith_args("tunesmith runs show <run id> | head") == ["runs", "show", "X"]
    assert tunesmith_args("make demo   # then `tunesmith quickstart`") is None
    for line in [
        "tunesmith eval judge RUN --judge-model NAME [--rubric correctness,tone] [--pairwise base|OTHER_RUN]",
        "tunesmith data prepare faq.csv --map prompt=question completion=answer",
        "tunesmith eval score PREDICTIONS.jsonl --references FILE",
        "tunesmith generate RUN --prompt hi --trust-remote-code",
        "tunesmith train --help",
    ]:
        parse(tunesmith_args(line) or [])


def test_continuation_lines_are_joined(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text("text\n```bash\ntunesmith train \\\n  --data d \\\n  --epochs 2\n```\n", encoding="utf-8")
    assert command_lines(doc) == [(3, "tunesmith train    --data d    --epochs 2")]


def _links(doc: str) -> list[str]:
    return [target for target in LINK.findall((ROOT / doc).read_text(encoding="utf-8")) if "://" not in target]


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_in_readme_and_docs_resolve() -> None:
    """Every relative link in README.md and the topic pages names a file that exists (and a heading there)."""
    broken = []
    for doc in CHECKED:
        for target in _links(doc):
            file, _, anchor = target.partition("#")
            path = (ROOT / doc).parent / file if file else ROOT / doc
            if not path.exists():
                broken.append(f"{doc}: {target} (no such file)")
            elif anchor and path.suffix == ".md":
                headings = {_anchor(h) for h in re.findall(r"^#+ (.+)$", path.read_text(encoding="utf-8"), re.MULTILINE)}
                if anchor not in headings:
                    broken.append(f"{doc}: {target} (no such heading)")
    assert not broken, broken


def test_readme_links_every_topic_page() -> None:
    linked = {target.partition("#")[0] for target in _links("README.md")}
    assert not [topic for topic in TOPICS if topic not in linked]
    assert "docs/architecture.md" in linked and "docs/python-api.md" in linked


def test_readme_is_the_short_path() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move the depth into docs/"


def test_readme_tests_section_names_make_test() -> None:
    """CI runs the test command the README gives."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Tests\n", 1)
    assert len(section) == 2, "README.md lost its `## Tests` section"
    assert "`make test`" in section[1].split("\n## ", 1)[0]
