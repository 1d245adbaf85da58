"""`tunesmith generate` and `tunesmith chat`: a tuned model answering with its training template."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tunesmith.chat_template import end_of_turn_ids
from tunesmith.data.dataset import load_dataset
from tunesmith.errors import UserError
from tunesmith.models.artefact import load_tuned
from tunesmith.models.generate import generate_one
from tunesmith.registry.runfolder import find_run, load_run_info, read_config
from tunesmith.ui import console
from tunesmith.workspace import Workspace


def trained_system_prompt(workspace: Workspace, dataset_name: str) -> str | None:
    """The system message the training examples shared, so a bare prompt is asked the way the model learned."""
    try:
        train = load_dataset(workspace, dataset_name).splits["train"]
    except UserError:  # the dataset was made in another TUNESMITH_HOME: ask without a system message
        return None
    systems = {e.messages[0].content for e in train if e.messages and e.messages[0].role == "system"}
    return systems.pop() if len(systems) == 1 else None


@dataclass
class Session:
    model: Any
    tokenizer: Any
    eot_ids: list[int]
    system: str | None
    max_new_tokens: int
    history: list[dict] = field(default_factory=list)

    @classmethod
    def open(cls, workspace: Workspace, run_ref: str, system: str | None, max_new_tokens: int) -> "Session":
        run_dir = find_run(workspace, run_ref)
        info = load_run_info(run_dir)
        if info.task == "classification":
            raise UserError(f"run {info.run_id} is a classifier: it picks one of {len(info.labels or [])} labels and does not write answers",
                            fix=f"label a text with `tunesmith classify {info.run_id} --text \"...\"`; score it with `tunesmith eval {info.run_id}`")
        model, tokenizer = load_tuned(run_dir, info, read_config(run_dir).model)
        system = system if system is not None else trained_system_prompt(workspace, info.dataset)
        return cls(model, tokenizer, end_of_turn_ids(tokenizer), system, max_new_tokens)

    def reply(self, text: str) -> str:
        self.history.append({"role": "user", "content": text})
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + self.history
        answer = generate_one(self.model, self.tokenizer, messages, self.eot_ids, self.max_new_tokens)
        self.history.append({"role": "assistant", "content": answer})
        return answer

    def interactive(self) -> None:
        console.print("chat: empty line or Ctrl-D ends, /reset starts over")
        while True:
            try:
                text = input("you> ").strip()
            except EOFError:
                break
            if not text:
                break
            if text == "/reset":
                self.history.clear()
                continue
            print(f"model> {self.reply(text)}", flush=True)
