"""`--to merged`: one self-contained Hugging Face folder (safetensors, the run's tokenizer with its chat
template, a generation_config.json that stops at every end-of-turn token and decodes greedily) that
`AutoModelForCausalLM.from_pretrained` loads with no tunesmith installed, and vLLM serves as it is.

Full fine-tunes are saved as trained; LoRA and DoRA are folded into the base weights. QLoRA is folded
into the de-quantised (full-precision) base: the adapter learned against the 4-bit weights, so the
merge is not the model that was trained, and export.json says so; verification measures how close it is.
Prompt and prefix tuning add virtual tokens in PEFT's forward and have no weights to fold: refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunesmith.errors import UserError
from tunesmith.export.base import Answer, Conversation, ExportOptions, Written
from tunesmith.export.source import Source


def check_merged(source: Source, options: ExportOptions) -> None:
    method = source.method
    if method.peft_config is not None and not method.mergeable and not method.quantized:
        raise UserError(
            f"run {source.run_id} was trained with {method.name}: its virtual tokens are added in PEFT's forward pass, there are no weights to merge",
            where="--to merged",
            fix=f"serve it with `tunesmith serve {source.run_id}` (answers as trained), or export the PEFT adapter with "
            f"`tunesmith export {source.run_id} --to adapter --runtime peft`",
        )


def merged_model(source: Source) -> tuple[Any, Any, list[str]]:
    """(model, tokenizer, notes): the run's weights with any adapter folded in, in the dtype it was evaluated in."""
    from tunesmith.models.loading import load_adapter, load_model, load_tokenizer
    from tunesmith.models.methods import load_trained

    method = source.method
    if not method.quantized:
        model, tokenizer = load_trained(source.artefact, method.name, source.info.base_model_path, source.spec.model, source.spec.train, merge=True)
        return model, tokenizer, []
    base, _, _ = load_model(source.spec.model, source.info.base_model_path)  # full precision, not the 4-bit base it trained on
    model = load_adapter(base, source.artefact).merge_and_unload()
    note = (
        "de-quantised merge: the QLoRA adapter was trained over the 4-bit (NF4) base and is folded here into the full-precision base; "
        "the verification figures say how far its answers moved"
    )
    return model, load_tokenizer(str(source.artefact)), [note]


def save_tokenizer(tokenizer: Any, folder: Path) -> bool:
    """The run's tokenizer, its chat template made to render tools as tunesmith does when the model's
    own drops them (chat_template.tools.exported_template): vLLM, transformers and llama.cpp given
    `tools=[...]` then render what training saw. True when the template was extended."""
    from tunesmith.chat_template.tools import exported_template

    template = exported_template(tokenizer)
    if template is not None:
        tokenizer.chat_template = template
    tokenizer.save_pretrained(folder)
    return template is not None


TOOL_TEMPLATE_NOTE = (
    "the chat template renders tools, tool calls and tool answers in tunesmith's tool template (docs/tools.md), as in training; "
    "conversations without tools render exactly as the model's own template"
)


def write_generation_config(folder: Path, tokenizer: Any, model_config: Any = None) -> dict[str, Any]:
    """generation_config.json: stop at every end-of-turn token the run was trained to emit, pad with the
    tokenizer's pad, decode greedily. Written fresh, not inherited from the base: a base's sampling
    defaults (temperature, top_p, repetition_penalty) are applied by vLLM and transformers to every
    request that does not set them, and answers would silently differ from tunesmith's greedy ones."""
    from transformers import GenerationConfig

    from tunesmith.chat_template import end_of_turn_ids

    eot = end_of_turn_ids(tokenizer)
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else getattr(model_config, "bos_token_id", None)
    config = GenerationConfig(
        bos_token_id=bos, eos_token_id=eot, pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eot[0], do_sample=False
    )
    config.save_pretrained(folder)
    return json.loads((folder / "generation_config.json").read_text(encoding="utf-8"))


def write_merged(source: Source, folder: Path, options: ExportOptions) -> Written:
    from tunesmith.models.loading import import_deepspeed_quietly

    model, tokenizer, notes = merged_model(source)
    import_deepspeed_quietly()
    model.save_pretrained(folder, safe_serialization=True)
    tool_template = save_tokenizer(tokenizer, folder)
    if tool_template:
        notes = [*notes, TOOL_TEMPLATE_NOTE]
    generation = write_generation_config(folder, tokenizer, model.config)
    usage = (
        f"transformers: AutoModelForCausalLM.from_pretrained({str(options.out)!r}) with AutoTokenizer from the same folder "
        f"(its chat template); vLLM: vllm serve {options.out} --override-generation-config '{{\"temperature\": 0}}' (greedy as evaluated)"
    )
    details = {
        "dtype": str(model.dtype).removeprefix("torch."),
        "end_of_turn_ids": generation["eos_token_id"],
        "dequantised_merge": source.method.quantized,
        "tool_template": tool_template,
    }
    return Written(runtime="transformers", usage=usage, notes=notes, details=details)


def load_plain(folder: Path) -> tuple[Any, Any]:
    """The folder as any transformers program loads it: no tunesmith code, no remote code, safetensors only."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.export.verify import runtime_device

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype="auto", use_safetensors=True)
    return model.to(runtime_device()), tokenizer


def answer_merged(folder: Path, written: Written, conversations: list[Conversation], max_new_tokens: int, batch_size: int) -> list[Answer]:
    from tunesmith.export.verify import transformers_answers

    model, tokenizer = load_plain(folder)
    return transformers_answers(model, tokenizer, conversations, max_new_tokens, batch_size)
