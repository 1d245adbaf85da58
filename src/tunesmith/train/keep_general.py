"""Self-distilled replay (data.keep_general): the base model's own greedy answers to general prompts,
mixed into every epoch so that the tuned model keeps answering general requests as the base did.

The prompts ship with tunesmith (eval/probes/general_prompts.jsonl) and share no question with the
general-skills probe, so the probe measures what the replay kept rather than what it rehearsed. The
answers depend only on the base model and the prompts: they are generated once per base model and
cached in the workspace (cache/keep-general/), keyed by both, so later runs on that base pay nothing.
Measured on the quickstart against the other candidates in docs/forgetting.md."""

from __future__ import annotations

import hashlib
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

from tunesmith.chat_template import end_of_turn_ids
from tunesmith.config import KeepGeneralSpec, ModelSpec
from tunesmith.data.example import Example, Message
from tunesmith.models.generate import generate_tokens
from tunesmith.models.loading import load_model
from tunesmith.ui import console

PROMPTS_FILE = "general_prompts.jsonl"
BATCH_SIZE = 32


def general_prompts() -> list[dict[str, str]]:
    """The shipped general prompts: {id, category, prompt} each."""
    text = resources.files("tunesmith.eval").joinpath("probes", PROMPTS_FILE).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def cache_file(home: Path, base_path: str, prompts: list[dict[str, str]], keep: KeepGeneralSpec) -> Path:
    """Where the answers of this base model to these prompts are kept; a new base, prompt set or length limit is a new file."""
    key = hashlib.sha256(json.dumps([base_path, prompts, keep.max_new_tokens]).encode()).hexdigest()[:16]
    return home / "cache" / "keep-general" / f"{Path(base_path).name or 'model'}-{key}.jsonl"


def self_distilled(model_spec: ModelSpec, base_path: str, keep: KeepGeneralSpec, home: Path) -> list[Example]:
    """The base model's answers to the general prompts as training examples (one user turn, one
    assistant turn), generated on first use and read from the workspace's cache after that."""
    prompts = general_prompts()
    cached = cache_file(home, base_path, prompts, keep)
    if not cached.is_file():
        rows = _generate(model_spec, base_path, prompts, keep.max_new_tokens)
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_name(f"{cached.name}.{os.getpid()}.tmp")  # parallel processes each write whole files; the rename is atomic
        partial.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        partial.replace(cached)
    rows = [json.loads(line) for line in cached.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [
        Example(id=f"keep-general-{r['id']}", messages=[Message(role="user", content=r["prompt"]), Message(role="assistant", content=r["answer"])])
        for r in rows
    ]


def _generate(model_spec: ModelSpec, base_path: str, prompts: list[dict[str, str]], max_new_tokens: int) -> list[dict[str, Any]]:
    """Greedy answers of the base model. An answer that ran out of tokens is cut back to its last
    finished sentence, and left out if it has none: trained on whole, it would teach the model to end
    its turn mid-sentence."""
    console.print(f"keep_general: the base model answers {len(prompts)} general prompts once (cached in the workspace for later runs)")
    model, tokenizer, _ = load_model(model_spec, base_path)
    eot = end_of_turn_ids(tokenizer)
    conversations = [Example(id=p["id"], messages=[Message(role="user", content=p["prompt"])]) for p in prompts]
    tokens = generate_tokens(model, tokenizer, conversations, eot, max_new_tokens=max_new_tokens, batch_size=BATCH_SIZE)
    rows = []
    for prompt, ids in zip(prompts, tokens):
        answer = tokenizer.decode(ids, skip_special_tokens=True).strip()
        if not (ids and ids[-1] in eot):
            answer = _finished_part(answer)
        if answer:
            rows.append({"id": prompt["id"], "prompt": prompt["prompt"], "answer": answer})
    console.print(f"keep_general: {len(rows)} of {len(prompts)} answers replayed (those cut off at {max_new_tokens} tokens end at their last full sentence)")
    if len(rows) < len(prompts) // 4:
        console.print("[yellow]keep_general: the base model finished few of its answers; raise data.keep_general.max_new_tokens for more to replay")
    return rows


def _finished_part(answer: str) -> str:
    """The answer up to its last sentence end or line break, or "" when it has none."""
    ends = [answer.rfind(mark) for mark in (". ", "! ", "? ", "\n")] + [len(answer) - 1 if answer.endswith((".", "!", "?")) else -1]
    end = max(ends)
    return answer[: end + 1].strip() if end > 0 else ""
