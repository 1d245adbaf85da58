"""Behaves as trained: the export, loaded in its own runtime, against tunesmith's own generation on the
run's held-out prompts. Three checks, each a figure in export.json:

  (a) the prompt's token ids are identical (the export's chat template and tokenizer render what training saw);
  (b) every answer stops at an end-of-turn token where tunesmith's does (no runaway to max_new_tokens);
  (c) greedy answers agree: unquantised, >= 98% identical; quantised, the task's headline metric
      within 2 points of tunesmith's.

`compare_answers` takes two lists of Answer (prompt ids, text, stopped), so any runtime's answers can be
held to the same line (llama.cpp's for gguf)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from tunesmith.errors import UserError
from tunesmith.export.base import Answer, Conversation, asks_tools, tools_of

IDENTICAL_LINE = 0.98  # unquantised: share of greedy answers identical to tunesmith's
METRIC_POINTS = 2.0  # quantised: the task metric may move this many points (of 100)
BATCH_SIZE = 8  # both sides batch the same prompts the same way, so padding cannot make them differ


@dataclass
class Verification:
    runtime: str
    examples: int
    prompt_ids_identical: int
    identical_answers: int
    identical_rate: float
    tunesmith_runaways: int  # tunesmith's own answers that ran to max_new_tokens (not the export's fault)
    export_runaways: int
    new_runaways: int  # the export said tunesmith's whole answer and ran on: the end-of-turn token is lost
    max_new_tokens: int
    quantized: bool
    line: str  # the rule the export was held to, in words
    passed: bool
    failures: list[str] = field(default_factory=list)
    metric: dict[str, Any] | None = None  # quantised: {"name", "tunesmith", "export"}
    first_difference: dict[str, Any] | None = None  # {"example", "prompt", "tunesmith", "export", "why"}
    seconds: float = 0.0
    not_checked: list[str] = field(default_factory=list)  # runtimes the artefact is for that could not run here

    def record(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        head = f"{self.identical_answers}/{self.examples} answers identical ({self.identical_rate:.0%})"
        if self.metric:
            head += f", {self.metric['name']} {self.metric['tunesmith']:.3f} (tunesmith) vs {self.metric['export']:.3f} (export)"
        text = (
            f"{head}, prompt ids identical {self.prompt_ids_identical}/{self.examples}, ran to max_new_tokens {self.export_runaways} "
            f"(tunesmith's own {self.tunesmith_runaways}, new {self.new_runaways}), checked with {self.runtime}: {'passed' if self.passed else 'FAILED'}"
        )
        return text + "".join(f"; not checked: {what}" for what in self.not_checked)

    def first_difference_text(self) -> str:
        d = self.first_difference
        if not d:
            return ""
        return f"first difference, example {d['example']} ({d['why']}):\n  prompt: {d['prompt']!r}\n  tunesmith: {d['tunesmith']!r}\n  export: {d['export']!r}"


def _prompt_text(conversation: Conversation) -> str:
    users = [m.get("content") for m in conversation if m.get("role") == "user"]
    return str(users[-1] if users else conversation[-1].get("content", ""))


def _headline(outputs: list[str], references: list[str]) -> tuple[str, float]:
    from tunesmith.eval.metrics import compute_metrics, detect_task, headline_metric

    metrics = compute_metrics(outputs, references)
    name = headline_metric(detect_task(references), metrics)
    return name, float(metrics.get(name, 0.0))


def compare_answers(
    reference: Sequence[Answer],
    exported: Sequence[Answer],
    *,
    runtime: str,
    max_new_tokens: int,
    ids: Sequence[str] | None = None,
    conversations: Sequence[Conversation] | None = None,
    references: Sequence[str] | None = None,
    quantized: bool = False,
) -> Verification:
    """tunesmith's answers (`reference`) against the export's, example by example. `references` (the
    dataset's answers) are needed when `quantized`: the task metric is compared instead of the text."""
    if len(reference) != len(exported):
        raise ValueError(f"{len(reference)} reference answers but {len(exported)} from the export")
    n = len(reference)
    same_prompt = [a.prompt_ids == b.prompt_ids for a, b in zip(reference, exported)]
    same_text = [a.text == b.text for a, b in zip(reference, exported)]
    # Lost stop tokens show as an export that says tunesmith's whole answer and then goes on. An answer
    # that took another path first (a quantised export's near-tied token) and then ran long says
    # nothing about stop tokens: the identical-answer line or the task metric judges it.
    new_runaway = [a.stopped and not b.stopped and b.text.startswith(a.text) for a, b in zip(reference, exported)]
    identical = sum(same_text)
    rate = identical / n if n else 1.0
    failures = []
    if not all(same_prompt):
        failures.append(f"{n - sum(same_prompt)} of {n} prompts render to other token ids than in training (the chat template or tokenizer differs)")
    if any(new_runaway):
        failures.append(
            f"{sum(new_runaway)} answers ran to max_new_tokens past the point where tunesmith's stopped (the end-of-turn token is not a stop token)"
        )
    metric = None
    if quantized:
        if references is None:
            raise ValueError("a quantised export is compared by its task metric: give the references")
        name, ours = _headline([a.text for a in reference], list(references))
        _, theirs = _headline([b.text for b in exported], list(references))
        metric = {"name": name, "tunesmith": round(ours, 4), "export": round(theirs, 4)}
        line = f"prompt ids identical, no new runaways, {name} within {METRIC_POINTS:g} points of tunesmith's"
        if abs(ours - theirs) * 100 > METRIC_POINTS:
            failures.append(f"{name} {theirs:.3f} is more than {METRIC_POINTS:g} points from tunesmith's {ours:.3f}")
    else:
        line = f"prompt ids identical, no new runaways, at least {IDENTICAL_LINE:.0%} of greedy answers identical"
        if rate < IDENTICAL_LINE:
            failures.append(f"only {identical} of {n} greedy answers ({rate:.0%}) are identical to tunesmith's (the line is {IDENTICAL_LINE:.0%})")
    first = next((i for i in range(n) if not (same_prompt[i] and same_text[i] and not new_runaway[i])), None)
    difference = None
    if first is not None:
        why = "prompt token ids differ" if not same_prompt[first] else "ran to max_new_tokens" if new_runaway[first] else "answers differ"
        difference = {
            "example": ids[first] if ids else first,
            "prompt": _prompt_text(conversations[first]) if conversations else None,
            "tunesmith": reference[first].text,
            "export": exported[first].text,
            "why": why,
        }
        if not same_prompt[first]:
            difference["tunesmith_prompt_ids"] = reference[first].prompt_ids
            difference["export_prompt_ids"] = exported[first].prompt_ids
    return Verification(
        runtime=runtime,
        examples=n,
        prompt_ids_identical=sum(same_prompt),
        identical_answers=identical,
        identical_rate=round(rate, 4),
        tunesmith_runaways=sum(not a.stopped for a in reference),
        export_runaways=sum(not b.stopped for b in exported),
        new_runaways=sum(new_runaway),
        max_new_tokens=max_new_tokens,
        quantized=quantized,
        line=line,
        passed=not failures,
        failures=failures,
        metric=metric,
        first_difference=difference,
    )


# ---------------------------------------------------------------- the two sides


def tunesmith_answers(source: Any, conversations: list[Conversation], max_new_tokens: int, batch_size: int = BATCH_SIZE) -> list[Answer]:
    """What `tunesmith generate` answers: the run loaded by its one loader, its training template, batched generation."""
    import gc

    from tunesmith.chat_template import end_of_turn_ids, render_messages
    from tunesmith.models.artefact import load_run_model
    from tunesmith.models.generate import generate_tokens

    model, tokenizer = load_run_model(source.folder, source.info, source.spec.model)
    eot = end_of_turn_ids(tokenizer)
    texts = [render_messages(tokenizer, c, tools_of(c)) for c in conversations]
    tokens = generate_tokens(model, tokenizer, texts, eot, max_new_tokens=max_new_tokens, batch_size=batch_size)
    answers = [
        Answer(tokenizer(t, add_special_tokens=False)["input_ids"], tokenizer.decode(ids, skip_special_tokens=True).strip(), bool(ids) and ids[-1] in eot)
        for t, ids in zip(texts, tokens)
    ]
    del model
    gc.collect()
    return answers


def runtime_device() -> Any:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def runtime_messages(conversation: Conversation) -> list[dict]:
    """The messages as an OpenAI-compatible server hands them to a Hugging Face template: calls' arguments
    as objects, not JSON text (vLLM parses them so; HF templates expect a dict)."""
    from tunesmith.chat_template.tools import template_message

    return [template_message(m) for m in conversation]


def runtime_render(tokenizer: Any, conversation: Conversation) -> str:
    """A prompt as a plain transformers program renders it: the folder's own chat template, given the tools when the prompt has them."""
    tools = tools_of(conversation)
    if tools:
        return tokenizer.apply_chat_template(runtime_messages(conversation), tools=tools, tokenize=False, add_generation_prompt=True)
    return tokenizer.apply_chat_template(runtime_messages(conversation), tokenize=False, add_generation_prompt=True)


def transformers_answers(model: Any, tokenizer: Any, conversations: list[Conversation], max_new_tokens: int, batch_size: int = BATCH_SIZE) -> list[Answer]:
    """Answers as a plain transformers program gets them from an exported folder: the tokenizer's own chat
    template, `model.generate` with nothing but max_new_tokens (stop tokens, padding and greedy decoding
    come from the folder's generation_config.json). Prompts are batched in generate_tokens' order, so
    both sides pad the same rows together."""
    import torch

    texts = [runtime_render(tokenizer, c) for c in conversations]
    config = model.generation_config
    stops = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id] if config.eos_token_id is not None else []
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None and config.pad_token_id is not None:
        tokenizer.pad_token_id = config.pad_token_id
    # PEFT's prompt learning mishandles left padding in its own generate: such adapters are asked one prompt at a time.
    prompt_learning = bool(getattr(getattr(model, "active_peft_config", None), "is_prompt_learning", False))
    size = 1 if prompt_learning else batch_size
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    answers: list[Answer | None] = [None] * len(texts)
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        for start in range(0, len(order), size):
            chunk = order[start : start + size]
            encoded = tokenizer([texts[i] for i in chunk], return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            generated = model.generate(**encoded, max_new_tokens=max_new_tokens)
            new = generated[:, encoded["input_ids"].shape[1] :]
            for row, index in enumerate(chunk):
                ids = new[row].tolist()
                end = next((p for p, t in enumerate(ids) if t in stops), None)
                kept = ids if end is None else ids[: end + 1]
                prompt_ids = tokenizer(texts[index], add_special_tokens=False)["input_ids"]
                answers[index] = Answer(prompt_ids, tokenizer.decode(kept, skip_special_tokens=True).strip(), end is not None)
    return [a for a in answers if a is not None]


def nothing_to_verify(written: Any, runtime: str, target: str, left_out: int, max_new_tokens: int) -> Verification:
    """A failed verification for a target whose template cannot render tools, when every held-out prompt offers them."""
    why = (
        f"all {left_out} held-out prompts offer tools, which {target}'s template cannot render (role and content only): the export would not prompt as trained"
    )
    found = crashed(written, runtime, 0, max_new_tokens, RuntimeError(why), 0.0)
    found.failures = [why]
    found.line = "prompts without tools render as in training"
    found.not_checked.append(f"{left_out} held-out prompts with tools ({target}'s template renders role and content only)")
    return found


def crashed(written: Any, runtime: str, examples: int, max_new_tokens: int, exc: BaseException, seconds: float) -> Verification:
    """A failed verification for an export its runtime could not even run."""
    cause = str(exc).splitlines()[0] if str(exc) else ""
    return Verification(
        runtime=runtime,
        examples=examples,
        prompt_ids_identical=0,
        identical_answers=0,
        identical_rate=0.0,
        tunesmith_runaways=0,
        export_runaways=0,
        new_runaways=0,
        max_new_tokens=max_new_tokens,
        quantized=written.quantized,
        line="the runtime loads the export and answers",
        passed=False,
        failures=[f"{runtime} could not answer with the export: {type(exc).__name__}: {cause}"],
        seconds=round(seconds, 1),
    )


def verify_answers(source: Any, target: Any, folder: Any, written: Any, options: Any) -> Verification:
    """The export's answers (target.answer, in its runtime) against tunesmith's, on the run's held-out prompts."""
    started = time.perf_counter()
    runtime = target.checked_with or written.runtime
    ids, conversations, references = source.conversations(options.verify_examples)
    left_out = 0
    if not target.renders_tools:
        kept = [i for i, c in enumerate(conversations) if not asks_tools(c)]
        left_out = len(conversations) - len(kept)
        ids, conversations, references = [ids[i] for i in kept], [conversations[i] for i in kept], [references[i] for i in kept]
    max_new_tokens = source.spec.eval.max_new_tokens
    if left_out and not conversations:  # nothing left to compare: a pass here would be vacuous
        return nothing_to_verify(written, runtime, target.name, left_out, max_new_tokens)
    reference = tunesmith_answers(source, conversations, max_new_tokens)
    try:
        exported = target.answer(folder, written, conversations, max_new_tokens, BATCH_SIZE)
    except UserError:
        raise
    except Exception as exc:  # the runtime itself cannot run the export: that is the verification's finding, not a crash of tunesmith's
        return crashed(written, runtime, len(conversations), max_new_tokens, exc, time.perf_counter() - started)
    result = compare_answers(
        reference,
        exported,
        runtime=runtime,
        max_new_tokens=max_new_tokens,
        ids=ids,
        conversations=conversations,
        references=references,
        quantized=written.quantized,
    )
    result.seconds = round(time.perf_counter() - started, 1)
    if target.not_checked:
        result.not_checked.append(target.not_checked)
    if left_out:
        result.not_checked.append(f"{left_out} held-out prompts with tools ({target.name}'s template renders role and content only)")
    if target.name in ("merged", "adapter"):
        import importlib.util

        # vLLM is what these folders are laid out for; where it is installed the lead's engine check can join here
        if importlib.util.find_spec("vllm") is None:
            result.not_checked.append("vLLM (not installed here)")
    return result
