"""The shapes every export target is made of: what the user asked (ExportOptions), what a target wrote
(Written), one answer from a runtime (Answer), and the Target itself, a row of the registry in targets.py.

A target is three steps the export flow (pipeline.py) runs in order:

  check(source, options)            refuse before anything is written (a method the target cannot take)
  write(source, folder, options)    write the artefact into `folder` (a staging folder), return Written
  answer(folder, written, conversations, max_new_tokens, batch_size)
                                    load the artefact in ITS runtime, with no tunesmith code in the
                                    loading path, and answer the conversations greedily

verify.py compares `answer`'s results with tunesmith's own generation. Where the artefact's runtime
cannot run here (Ollama), `answer` runs what stands nearest (llama.cpp, Ollama's engine, with the
Modelfile's template and stops) and `not_checked` names what was not run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# export.source.Source, the run read once: source.py builds on the shapes here, so they name it without importing it.
Source = Any

Conversation = list[dict[str, Any]]  # a prompt as chat messages, ready for the assistant's turn


class ToolConversation(list):
    """A prompt's messages and the tools it was offered: still a list of messages, so a runtime that
    knows no tools reads it as before; tools_of() gives the tools to those that pass them."""

    def __init__(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> None:
        super().__init__(messages)
        self.tools = tools or None


def tools_of(conversation: Conversation) -> list[dict[str, Any]] | None:
    return getattr(conversation, "tools", None)


def asks_tools(conversation: Conversation) -> bool:
    """Whether the prompt offers tools or holds calls or tool answers (the tool template renders it)."""
    from tunesmith.chat_template.tools import uses_tools

    return uses_tools(conversation, tools_of(conversation))


@dataclass(frozen=True)
class ExportOptions:
    to: str
    out: Path  # the final folder (the target writes into a staging folder beside it, renamed when complete)
    quantize: str | None = None
    runtime: str | None = None  # adapter: "vllm" (default: refuse what vLLM refuses) or "peft"
    verify: bool = True
    verify_examples: int = 32


@dataclass
class Written:
    """What a target wrote, for export.json and the summary."""

    runtime: str  # what the artefact is made for: "transformers", "vllm", "peft", "llama.cpp", "ollama"
    usage: str  # the command (or code) that uses it, with the final folder's path
    notes: list[str] = field(default_factory=list)  # what the user must know (a de-quantised merge, a base not copied)
    details: dict[str, Any] = field(default_factory=dict)  # target-specific fields of export.json
    quantized: bool = False  # answers are held to the task metric (within 2 points), not to identical text


@dataclass(frozen=True)
class Answer:
    """One greedy answer: the prompt's token ids as the runtime rendered them, the answer's text, and
    whether it ended at an end-of-turn token (False: it ran on to max_new_tokens)."""

    prompt_ids: list[int]
    text: str
    stopped: bool


AnswerFn = Callable[[Path, Written, list[Conversation], int, int], list[Answer]]


def no_check(source: Source, options: ExportOptions) -> None:
    return None


@dataclass(frozen=True)
class Target:
    name: str
    help: str
    write: Callable[[Source, Path, ExportOptions], Written]
    answer: AnswerFn
    check: Callable[[Source, ExportOptions], None] = no_check
    quantizations: tuple[str, ...] = ()  # --quantize values it takes; () refuses --quantize
    runtimes: tuple[str, ...] = ()  # --runtime values it takes, the first the default; () refuses --runtime
    not_checked: str = ""  # the runtime the artefact is for, where `answer` had to stand in for it
    checked_with: str = ""  # what `answer` runs, for the figures ("transformers + PEFT" standing in for vLLM); "" : Written.runtime
    renders_tools: bool = True  # False: the artefact's template cannot render tools, so prompts with tools are left out of verification
