"""The export targets, one row each: `--to NAME` picks the row. A target is a write step and a way to
verify what it wrote (export/base.py says what each field does); adding one is one row here."""

from __future__ import annotations

from tunesmith.errors import UserError
from tunesmith.export.adapter import answer_adapter, check_adapter, write_adapter
from tunesmith.export.base import ExportOptions, Target
from tunesmith.export.gguf import QUANTIZE, answer_gguf, check_gguf, write_gguf
from tunesmith.export.merged import answer_merged, check_merged, write_merged
from tunesmith.export.ollama import answer_ollama, check_ollama, write_ollama_target

TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(
            "merged",
            "one Hugging Face folder, adapters folded in, for transformers and vLLM",
            write=write_merged,
            answer=answer_merged,
            check=check_merged,
            checked_with="transformers",
        ),
        Target(
            "adapter",
            "the PEFT adapter beside its base, for vLLM --lora-modules (or transformers + PEFT with --runtime peft)",
            write=write_adapter,
            answer=answer_adapter,
            check=check_adapter,
            runtimes=("vllm", "peft"),
            checked_with="transformers + PEFT",
        ),
        Target(
            "gguf",
            "one GGUF file for llama.cpp, chat template and stop tokens in its metadata",
            write=write_gguf,
            answer=answer_gguf,
            check=check_gguf,
            quantizations=QUANTIZE,
            checked_with="llama.cpp (llama-cpp-python, its chat template from the GGUF)",
        ),
        Target(
            "ollama",
            "a GGUF and a Modelfile (template, stop tokens, system prompt) for `ollama create`",
            write=write_ollama_target,
            answer=answer_ollama,
            check=check_ollama,
            quantizations=QUANTIZE,
            checked_with="llama.cpp with the Modelfile's TEMPLATE and stops (Ollama's engine; no Ollama server here)",
            renders_tools=False,
            not_checked="Ollama itself (no Ollama server installs here: the model was not created nor run in Ollama)",
        ),
    )
}


def target_for(name: str) -> Target:
    if name not in TARGETS:
        raise UserError(f"unknown export target {name!r}", where="--to", fix=f"use one of: {', '.join(TARGETS)}")
    return TARGETS[name]


def check_options(target: Target, options: ExportOptions) -> None:
    """--quantize and --runtime, against what the target takes."""
    if options.quantize is not None and options.quantize not in target.quantizations:
        takes = f"it takes {', '.join(target.quantizations)}" if target.quantizations else "it writes the weights in the dtype the run was evaluated in"
        raise UserError(
            f"--to {target.name} does not take --quantize {options.quantize}: {takes}",
            where="--quantize",
            fix="leave --quantize out, or use --to gguf / --to ollama for f16, q8_0 or q4_k_m",
        )
    if options.runtime is not None and options.runtime not in target.runtimes:
        takes = f"one of {', '.join(target.runtimes)}" if target.runtimes else "none"
        raise UserError(f"--to {target.name} does not take --runtime {options.runtime} (it takes {takes})", where="--runtime", fix="leave --runtime out")
    if options.verify and options.verify_examples < 1:
        raise UserError("--verify-examples must be at least 1", where="--verify-examples", fix="give a positive number, or --no-verify to skip verification")
