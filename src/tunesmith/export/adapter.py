"""`--to adapter`: the run's PEFT adapter and the base it needs, side by side:

  adapter/   adapter_config.json, adapter_model.safetensors (and the run's tokenizer)
  base/      the base model's config and safetensors weights (hard links where the filesystem allows),
             with the run's tokenizer (its chat template) and a generation_config.json that stops at
             every end-of-turn token and decodes greedily

laid out for `vllm serve base --enable-lora --lora-modules NAME=adapter`. `--runtime vllm` (the default)
refuses what vLLM refuses (DoRA, modules_to_save, prompt and prefix tuning), naming what to use instead;
`--runtime peft` writes any adapter for transformers + PEFT. A base named by hub id is not copied:
export.json names it, and the command downloads it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from tunesmith.errors import UserError
from tunesmith.export.base import Answer, Conversation, ExportOptions, Written
from tunesmith.export.merged import TOOL_TEMPLATE_NOTE, save_tokenizer, write_generation_config
from tunesmith.export.source import Source

VLLM_DEFAULT_MAX_RANK = 16  # vLLM's --max-lora-rank default


def adapter_config(source: Source) -> dict[str, Any]:
    from tunesmith.files import read_json
    from tunesmith.registry.runfolder import DAMAGED_RUN_FIX

    return read_json(source.artefact / "adapter_config.json", fix=DAMAGED_RUN_FIX)


def vllm_refuses(source: Source) -> str | None:
    """Why vLLM would not serve this adapter, or None."""
    config = adapter_config(source)
    if source.method.virtual_tokens or config.get("peft_type") != "LORA":
        return f"vLLM serves LoRA adapters only, and this run trained {source.method.name} ({config.get('peft_type')})"
    if config.get("use_dora"):
        return "vLLM does not serve DoRA adapters (use_dora in adapter_config.json)"
    if config.get("modules_to_save"):
        return f"vLLM does not serve adapters with modules_to_save ({', '.join(config['modules_to_save'])})"
    return None


def check_adapter(source: Source, options: ExportOptions) -> None:
    if source.method.peft_config is None:
        raise UserError(
            f"run {source.run_id} is a full fine-tune: every weight learned, so there is no adapter",
            where="--to adapter",
            fix=f"export the whole model with `tunesmith export {source.run_id} --to merged`",
        )
    if (options.runtime or "vllm") == "vllm":
        why = vllm_refuses(source)
        if why:
            instead = (
                f"`tunesmith export {source.run_id} --to merged` (a plain model vLLM serves)"
                if source.method.mergeable
                else f"`tunesmith serve {source.run_id}` (tunesmith's own server)"
            )
            raise UserError(
                f"{why}",
                where="--to adapter (--runtime vllm)",
                fix=f"use {instead}, or `tunesmith export {source.run_id} --to adapter --runtime peft` for transformers + PEFT",
            )


def _place(source_file: Path, target: Path) -> bool:
    """Weights are hard-linked (no second copy of a multi-GB base), copied where links cannot go; True when linked."""
    if source_file.suffix == ".safetensors":
        try:
            os.link(source_file, target)
            return True
        except OSError:
            pass
    shutil.copy2(source_file, target)
    return False


def _copy_base(base_path: Path, folder: Path) -> bool:
    """The base's config and safetensors weights (its own tokenizer and generation config are replaced by the run's); True when the weights are hard links."""
    folder.mkdir()
    names = ["config.json", *sorted(p.name for p in base_path.glob("*.safetensors")), *sorted(p.name for p in base_path.glob("*.safetensors.index.json"))]
    if not any(n.endswith(".safetensors") for n in names):
        raise UserError(f"the base model in {base_path} has no safetensors weights to copy", fix="export --to merged, which writes the weights itself")
    return any([_place(base_path / name, folder / name) for name in names])


def write_adapter(source: Source, folder: Path, options: ExportOptions) -> Written:
    from tunesmith.models.loading import load_tokenizer

    runtime = options.runtime or "vllm"
    shutil.copytree(source.artefact, folder / "adapter")
    tokenizer = load_tokenizer(str(source.artefact))
    tool_template = save_tokenizer(tokenizer, folder / "adapter")  # the run's tokenizer beside the adapter, its template as in base/
    base_path = Path(source.info.base_model_path)
    notes = [TOOL_TEMPLATE_NOTE] if tool_template else []
    if base_path.is_dir():
        if _copy_base(base_path, folder / "base"):
            notes.append(f"base/*.safetensors are hard links to {base_path} (no second copy): replace them, never edit them in place")
        tokenizer.save_pretrained(folder / "base")  # the run's tokenizer (template already extended above): vLLM renders chat with the base folder's template
        write_generation_config(folder / "base", tokenizer)
        base_ref = str(options.out / "base")
    else:
        base_ref = source.info.base_model_path
        notes.append(f"the base {base_ref} is a hub id, not copied: it is downloaded where the adapter is served")
    config = adapter_config(source)
    rank = int(config.get("r") or 0)
    quantized = source.method.quantized
    name = source.run_id
    if runtime == "vllm":
        flags = [f"--enable-lora --lora-modules {name}={options.out / 'adapter'}"]
        if rank > VLLM_DEFAULT_MAX_RANK:
            flags.append(f"--max-lora-rank {rank}")
        if quantized:
            flags.append("--quantization bitsandbytes")
        usage = f"vllm serve {base_ref} {' '.join(flags)} --override-generation-config '{{\"temperature\": 0}}'  (then ask for model {name!r})"
    else:
        usage = f"PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({base_ref!r}), {str(options.out / 'adapter')!r}) with AutoTokenizer from the base folder"
    if source.method.virtual_tokens:
        notes.append(
            "PEFT's own generate (peft 0.21, transformers 5) places virtual tokens differently from training (prompt tuning: positions; "
            "prefix tuning: the prefix never reaches the cache), so plain PEFT may answer otherwise: verification measures it; "
            f"`tunesmith serve {source.run_id}` answers as trained"
        )
    if quantized:
        notes.append("QLoRA: the adapter was trained over the base loaded in 4 bits (NF4); load the base that way to answer as trained")
    details: dict[str, Any] = {
        "base": base_ref,
        "adapter_type": config.get("peft_type"),
        "rank": rank or None,
        "lora_module_name": name,
        "tool_template": tool_template,
    }
    if quantized:
        qlora = source.spec.train.qlora
        details["base_quantization"] = {"load_in_4bit": True, "bnb_4bit_quant_type": qlora.quant_type, "bnb_4bit_use_double_quant": qlora.double_quant}
    return Written(runtime=runtime, usage=usage, notes=notes, details=details)


def answer_adapter(folder: Path, written: Written, conversations: list[Conversation], max_new_tokens: int, batch_size: int) -> list[Answer]:
    """transformers + PEFT, as a program with only the export folder would load it."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.export.verify import runtime_device, transformers_answers

    base = folder / "base" if (folder / "base").is_dir() else written.details["base"]
    quantization = written.details.get("base_quantization")
    kwargs: dict[str, Any] = {"dtype": "auto", "use_safetensors": True}
    if quantization:
        import torch
        from transformers import BitsAndBytesConfig

        kwargs.update(quantization_config=BitsAndBytesConfig(**quantization, bnb_4bit_compute_dtype=torch.float32), device_map={"": runtime_device()})
    model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
    if not quantization:
        model = model.to(runtime_device())
    model = PeftModel.from_pretrained(model, folder / "adapter")
    tokenizer = AutoTokenizer.from_pretrained(base if (folder / "base").is_dir() else folder / "adapter")
    return transformers_answers(model, tokenizer, conversations, max_new_tokens, batch_size)
