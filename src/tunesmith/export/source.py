"""The run an export is made from, read once: its folder, run.json, config and method, and the held-out
prompts verification asks. Every target and the verification read this, never the folder again."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from tunesmith.config import RunSpec
from tunesmith.errors import UserError
from tunesmith.export.base import Conversation, ToolConversation
from tunesmith.models.methods import Method, method_for
from tunesmith.registry.runfolder import DAMAGED_RUN_FIX, RunInfo, find_run, load_run_info, read_config
from tunesmith.workspace import Workspace


@dataclass
class Source:
    workspace: Workspace
    folder: Path
    info: RunInfo
    spec: RunSpec
    _prompts: dict[int, tuple[list[str], list[Conversation], list[str]]] = field(default_factory=dict, repr=False)

    @property
    def run_id(self) -> str:
        return self.info.run_id

    @property
    def method(self) -> Method:
        return method_for(self.info.method)

    @property
    def artefact(self) -> Path:
        """The trained weights: `adapter/` or `model/`."""
        return self.folder / self.info.artefact

    @cached_property
    def dataset_record(self) -> dict[str, Any]:
        """The run's dataset.json (the manifest of the version it trained on): name and content hash."""
        from tunesmith.files import read_json

        path = self.folder / "dataset.json"
        record = read_json(path, fix=DAMAGED_RUN_FIX) if path.is_file() else {}
        return {"name": record.get("name", self.info.dataset), "version": record.get("version", self.info.dataset_version)}

    @cached_property
    def system_prompt(self) -> str | None:
        """The system message the training examples shared (as `tunesmith generate` asks with), if any."""
        from tunesmith.data.dataset import trained_system_prompt

        return trained_system_prompt(self.workspace, self.info.dataset)

    def conversations(self, limit: int) -> tuple[list[str], list[Conversation], list[str]]:
        """(example ids, prompts, reference answers) of the first `limit` held-out test examples of the dataset
        the run trained on, each prompt with every turn before its answer (its system message included)."""
        if limit not in self._prompts:
            self._prompts[limit] = self._read_conversations(limit)
        return self._prompts[limit]

    def _read_conversations(self, limit: int) -> tuple[list[str], list[Conversation], list[str]]:
        from tunesmith.data.dataset import load_dataset

        fix = f"prepare the dataset '{self.info.dataset}' again in this workspace ($TUNESMITH_HOME), or export with --no-verify"
        try:
            dataset = load_dataset(self.workspace, self.info.dataset)
        except UserError as exc:
            raise UserError(f"cannot verify the export: {exc} (verification asks the run's held-out test prompts)", fix=fix) from None
        examples = [e for e in dataset.splits["test"] if e.prompt_messages][:limit]
        split = "test"
        if not examples:  # a tiny dataset can leave test empty; validation is held out too
            examples, split = [e for e in dataset.splits["validation"] if e.prompt_messages][:limit], "validation"
        if not examples:
            raise UserError(f"cannot verify the export: dataset '{dataset.name}' has no held-out test or validation examples", fix=fix)
        if dataset.version != self.info.dataset_version:
            from tunesmith.ui import console

            console.print(
                f"[yellow]note:[/] dataset '{dataset.name}' is now version {dataset.version}; the run trained on {self.info.dataset_version}. "
                f"Verifying on the {split} prompts of the current version."
            )
        # the tools an example offers travel with its prompt, dumped as the renderer dumps them (chat_template._tools_of)
        prompts: list[Conversation] = [
            ToolConversation(
                [m.model_dump(exclude={"weight"}) for m in e.prompt_messages], [t.model_dump() for t in e.tools] if getattr(e, "tools", None) else None
            )
            for e in examples
        ]
        return [e.id for e in examples], prompts, [e.reference or "" for e in examples]


def load_source(workspace: Workspace, run_ref: str | Path) -> Source:
    """The run by id, name or folder, with trained weights to export; a classifier or an unfinished run is refused."""
    folder = find_run(workspace, str(run_ref))
    info = load_run_info(folder)
    if info.task == "classification":
        raise UserError(
            f"run {info.run_id} is a classifier: export writes generative (chat) models for transformers, vLLM, llama.cpp and Ollama",
            fix=f"label texts with `tunesmith classify {info.run_id}`; its weights are in {folder / info.artefact} "
            "(AutoModelForSequenceClassification loads a full run's model/ folder)",
        )
    if not (folder / info.artefact / "config.json").is_file() and not (folder / info.artefact / "adapter_config.json").is_file():
        raise UserError(
            f"run {info.run_id} has no trained weights in {folder / info.artefact} (status: {info.status})",
            fix=f"finish it with `tunesmith train --resume {info.run_id}`, or export a finished run (`tunesmith runs list`)",
        )
    return Source(workspace, folder, info, read_config(folder))
