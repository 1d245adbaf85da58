"""What a MODEL argument of `tunesmith serve` names, and the served models the transformers engine loads.

A MODEL is, in this order: a GGUF file; a folder (a run folder with run.json; an export folder,
read as plain files: a Hugging Face folder with config.json, a PEFT adapter folder, or a folder
holding one GGUF file); a run id or run name in the workspace; a base model (the embedded
default's name or a hub id). Served names: a run's id and its name; a folder's or file's name (and its path as given); a base's name.

LoRA runs on the same base share ONE copy of its weights: the base is loaded once and each run's
adapter added to it, chosen per request (PEFT mixed-adapter batches). PEFT cannot mix DoRA in
such batches, so a DoRA run is served merged, as its own model; so are full fine-tunes and QLoRA
runs (over their 4-bit base). Prompt and prefix tuning need PEFT's own forward for their virtual
tokens, which the batched decode loop bypasses: they are refused with what to use instead.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.config import ModelSpec
from tunesmith.errors import UserError
from tunesmith.workspace import Workspace

DEFAULT_CONTEXT = 2048


@dataclass
class Source:
    """A MODEL argument resolved to files, before anything is loaded."""

    arg: str
    kind: str  # "run", "hf" (a model folder or hub id), "adapter" (a PEFT folder on its base), "gguf"
    path: str  # the run folder, model folder or hub id, adapter folder, or GGUF file
    names: list[str]
    base: str | None = None  # run/adapter: the base model's path or hub id
    method: str | None = None  # run: its training method
    system: str | None = None  # run: the system prompt it was trained with
    model_spec: ModelSpec = field(default_factory=ModelSpec)
    info: Any = None  # run: its RunInfo
    eot_ids: list[int] | None = None  # run: the end-of-turn ids recorded at training


@dataclass
class Served:
    """A model name the server answers to, with how to build its prompts and which engine decodes it."""

    names: list[str]
    owned_by: str
    context_length: int
    system: str | None
    render: Callable[..., str]  # (chat messages, tools=None) -> the prompt text, in the model's chat template
    encode: Callable[[str], list[int]]
    route: Any  # the engine's handle
    engine: Any
    created: int = field(default_factory=lambda: int(time.time()))
    run_id: str | None = None  # the run behind these names, when it is one (traffic records name it)
    checkpoint: str | None = None  # the checkpoint served, when not the run's final model (e.g. "step-40")


def _gguf_in(folder: Path) -> Path | None:
    found = sorted(folder.glob("*.gguf"))
    return found[0] if found else None


def _adapter_in(folder: Path) -> Path | None:
    for candidate in (folder, *sorted(p for p in folder.iterdir() if p.is_dir())):
        if (candidate / "adapter_config.json").is_file():
            return candidate
    return None


def _adapter_base(adapter: Path, export: Path) -> str:
    """The base an exported adapter needs: a sibling folder with config.json (an export laid out for
    vLLM), else the base named in adapter_config.json."""
    for candidate in sorted(p for p in export.iterdir() if p.is_dir() and p != adapter):
        if (candidate / "config.json").is_file():
            return str(candidate)
    try:
        named = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):
        named = None
    if not named:
        raise UserError(f"{adapter} names no base model", where="adapter_config.json: base_model_name_or_path", fix="serve the run itself, or a merged export")
    return str(named)


def _export_system_prompt(folder: Path) -> str | None:
    """The system prompt the source run was trained with, when the folder's export.json records one
    (`system_prompt`): an export is then asked as the run is."""
    try:
        value = json.loads((folder / "export.json").read_text(encoding="utf-8")).get("system_prompt")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and value else None


def _from_run(arg: str, folder: Path, workspace: Workspace) -> Source:
    from tunesmith.data.dataset import trained_system_prompt
    from tunesmith.models.methods import method_for
    from tunesmith.registry.runfolder import load_run_info, read_config

    info = load_run_info(folder)
    spec = read_config(folder)
    if info.task == "classification":
        raise UserError(
            f"run {info.run_id} is a classifier: it picks a label and does not write answers", fix=f"label texts with `tunesmith classify {info.run_id}`"
        )
    if info.status not in ("completed", "stopped"):
        raise UserError(f"run {info.run_id} has no trained model to serve (status: {info.status})", fix="serve a completed run (`tunesmith runs list`)")
    if method_for(info.method).virtual_tokens:
        raise UserError(
            f"run {info.run_id} was trained with {info.method}, whose virtual tokens the server's batched decoding does not feed",
            fix=f"answer with `tunesmith generate {info.run_id}` or `tunesmith chat {info.run_id}`, or train it with lora to serve it",
        )
    names = [info.run_id] + ([spec.name] if spec.name and spec.name != info.run_id else [])
    return Source(
        arg,
        "run",
        str(folder),
        names,
        base=info.base_model_path,
        method=info.method,
        system=trained_system_prompt(workspace, info.dataset),
        model_spec=spec.model,
        info=info,
        eot_ids=list(info.end_of_turn_ids),
    )


def resolve(arg: str, workspace: Workspace) -> Source:
    """The Source a MODEL argument names, or a UserError saying what it could be."""
    from tunesmith.models.loading import resolve_model_path
    from tunesmith.registry.runfolder import find_run

    path = Path(arg).expanduser()
    names = list(dict.fromkeys([path.name, arg]))  # a folder or file answers to its name, and to the path as given
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise UserError(f"{arg} is a file but not a GGUF model", fix="give a .gguf file, a run id, a model or export folder, or a base model name")
        return Source(arg, "gguf", str(path.resolve()), names)
    if path.is_dir():
        if (path / "run.json").is_file():
            return _from_run(arg, find_run(workspace, str(path)), workspace)
        if (path / "config.json").is_file():
            return Source(arg, "hf", str(path.resolve()), names, system=_export_system_prompt(path))
        adapter = _adapter_in(path)
        if adapter is not None:
            return Source(arg, "adapter", str(adapter.resolve()), names, base=_adapter_base(adapter, path), system=_export_system_prompt(path))
        gguf = _gguf_in(path)
        if gguf is not None:
            return Source(arg, "gguf", str(gguf.resolve()), names)
        raise UserError(
            f"{arg} holds no model: no run.json, config.json, adapter_config.json or .gguf file",
            fix="give a run folder, an export folder (`tunesmith export`), or a Hugging Face model folder",
        )
    try:
        return _from_run(arg, find_run(workspace, arg), workspace)
    except UserError as exc:
        if not str(exc).startswith("no run"):
            raise
    try:
        return Source(arg, "hf", resolve_model_path(arg), [arg])
    except UserError:
        raise UserError(
            f"'{arg}' is not a run, a model folder, a GGUF file or a known base model",
            fix="give a run id or name (`tunesmith runs list`), an export folder, a .gguf file, or a base model such as smollm2-135m-instruct",
        ) from None


def context_length(config: Any, tokenizer: Any) -> int:
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 0 < limit < 10**7 else DEFAULT_CONTEXT


def _prompting(tokenizer: Any) -> tuple[Callable[..., str], Callable[[str], list[int]], Callable[[list[int]], str]]:
    from tunesmith.chat_template import render_messages

    def render(messages: list[dict], tools: list[dict] | None = None) -> str:
        try:
            return render_messages(tokenizer, messages, tools)
        except Exception as exc:  # the template's own raise_exception (roles out of order, ...): the client's messages
            from tunesmith.serve.protocol import ServeError

            raise ServeError(400, f"the model's chat template refused these messages: {exc}", param="messages") from None

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=True)

    return render, encode, decode


def load_transformers(sources: list[Source], max_batch: int = 32) -> list[Served]:
    """Every source loaded for the transformers engine, LoRA runs on one base sharing its weights."""
    from tunesmith.chat_template import end_of_turn_ids
    from tunesmith.models.artefact import load_run_model
    from tunesmith.models.loading import load_adapter, load_model, load_tokenizer, pick_device
    from tunesmith.models.methods import method_for
    from tunesmith.serve.engine import BASE_ADAPTER, Group, Route, TransformersEngine

    engine = TransformersEngine(max_batch=max_batch)
    shared = [s for s in sources if s.kind == "adapter" or (s.kind == "run" and method_for(s.method).mergeable and s.method != "dora")]
    bases: dict[str, Any] = {}  # base path -> [model, adapters so far]
    served: list[Served] = []

    def group_for(base_path: str, spec: ModelSpec) -> Group:
        if base_path not in bases:
            model, tokenizer, device = load_model(spec.model_copy(update={"name": base_path}), base_path)
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_of_turn_ids(tokenizer)[0]
            bases[base_path] = Group(model.eval(), device, pad, mixed_adapters=False)
        return bases[base_path]

    # A base with one adapter and not served bare itself gets the adapter merged in: no per-row
    # adapter routing to pay for, and the weights `tunesmith generate` answers with (it merges too).
    bare = {s.path for s in sources if s not in shared and s.kind not in ("run", "gguf")}
    adapters_on = Counter(s.base for s in shared)
    for index, source in enumerate(shared):
        group = group_for(source.base, source.model_spec)
        folder = Path(source.path) / (source.info.artefact if source.kind == "run" else "")
        group.model = load_adapter(group.model, folder, name=f"a{index}")
        alone = adapters_on[source.base] == 1 and source.base not in bare
        if alone:
            group.model = group.model.merge_and_unload()
        group.model.eval()
        group.mixed_adapters = not alone
        tokenizer = load_tokenizer(str(folder))
        render, encode, decode = _prompting(tokenizer)
        eot = source.eot_ids or end_of_turn_ids(tokenizer)
        route = Route(group, None if alone else f"a{index}", eot, decode)
        served.append(
            Served(
                source.names, "tunesmith", context_length(group.model.config, tokenizer), source.system, render, encode, route, engine, run_id=_run_id(source)
            )
        )
    for source in sources:
        if source in shared:
            continue
        if source.kind == "gguf":
            raise UserError(f"{source.arg} is a GGUF file, which the transformers engine does not load", fix="serve it with --engine llamacpp")
        if source.kind == "run":
            model, tokenizer = load_run_model(Path(source.path), source.info, source.model_spec)
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else source.eot_ids[0]
            group = Group(model.eval(), pick_device(source.model_spec), pad, mixed_adapters=False)
            adapter = None
        else:  # a base or merged folder: shared with the LoRA runs on it, when there are some
            group = group_for(source.path, source.model_spec)
            tokenizer = load_tokenizer(source.path)
            adapter = BASE_ADAPTER if group.mixed_adapters else None
        render, encode, decode = _prompting(tokenizer)
        route = Route(group, adapter, source.eot_ids or end_of_turn_ids(tokenizer), decode)
        served.append(
            Served(
                source.names, "tunesmith", context_length(group.model.config, tokenizer), source.system, render, encode, route, engine, run_id=_run_id(source)
            )
        )
    return served


def _run_id(source: Source) -> str | None:
    return source.info.run_id if source.kind == "run" and source.info is not None else None
