"""Training methods: which parameters learn, how the base is loaded for them, and how the saved
artefact is loaded back for evaluation, generation and chat.

| method        | what learns                                   | artefact   | loaded back as                       |
| ------------- | --------------------------------------------- | ---------- | ------------------------------------ |
| full          | every weight                                  | `model/`   | the saved model                      |
| lora          | low-rank adapters on the linear layers        | `adapter/` | base + adapter, merged               |
| dora          | LoRA plus a learned magnitude per output      | `adapter/` | base + adapter, merged               |
| qlora         | LoRA over a 4-bit (NF4) frozen base           | `adapter/` | the same 4-bit base + adapter        |
| prompt_tuning | virtual token embeddings before the input     | `adapter/` | base + adapter (nothing to merge)    |
| prefix_tuning | key/value prefixes in every attention layer   | `adapter/` | base + adapter (nothing to merge)    |

QLoRA is evaluated over the 4-bit base it was trained on, not merged into full precision:
merging would add the adapter to weights it never saw (the de-quantised ones differ), and
evaluation should measure the model that was trained.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.config import ModelSpec, TrainSpec
from tunesmith.errors import UserError


@dataclass(frozen=True)
class Method:
    """What a method is, for every part of tunesmith that must know: picked by name with `method_for`."""

    name: str
    artefact: str  # the run's folder for the trained weights: "model" (every weight) or "adapter"
    peft_config: Callable[[TrainSpec, Any, str | None], Any] | None = None  # (spec, PEFT task type, tokenizer path); None: the weights themselves learn
    quantized: bool = False  # the frozen base is loaded in 4 bits (bitsandbytes) and evaluated that way
    virtual_tokens: bool = False  # tokens before each row: rows cannot be packed
    mergeable: bool = False  # PEFT folds the adapter into the base weights (prompt learning has nothing to fold)
    classification: bool = False  # trains a classifier head too (PEFT's SEQ_CLS saves the new head)
    shardable: bool = True  # runs under FSDP and DeepSpeed (4-bit weights and virtual tokens do not)


def _lora(spec: TrainSpec, task_type: Any, tokenizer_path: str | None) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        task_type=task_type,
        r=spec.lora.r,
        lora_alpha=spec.lora.alpha,
        lora_dropout=spec.lora.dropout,
        target_modules=spec.lora.target_modules,
        use_dora=spec.method == "dora",
    )


def _prompt_tuning(spec: TrainSpec, task_type: Any, tokenizer_path: str | None) -> Any:
    from peft import PromptTuningConfig, PromptTuningInit

    settings = spec.prompt_tuning
    text = {"tokenizer_name_or_path": tokenizer_path, "prompt_tuning_init_text": settings.init_text} if settings.init == "text" else {}
    return PromptTuningConfig(
        task_type=task_type, num_virtual_tokens=settings.num_virtual_tokens, prompt_tuning_init=PromptTuningInit[settings.init.upper()], **text
    )


def _prefix_tuning(spec: TrainSpec, task_type: Any, tokenizer_path: str | None) -> Any:
    from peft import PrefixTuningConfig

    settings = spec.prefix_tuning
    hidden = {"encoder_hidden_size": settings.projection_hidden_size} if settings.projection_hidden_size else {}
    return PrefixTuningConfig(task_type=task_type, num_virtual_tokens=settings.num_virtual_tokens, prefix_projection=settings.projection, **hidden)


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("full", "model", classification=True),
        Method("lora", "adapter", _lora, mergeable=True, classification=True),
        Method("dora", "adapter", _lora, mergeable=True, classification=True),
        Method("qlora", "adapter", _lora, quantized=True, shardable=False),
        Method("prompt_tuning", "adapter", _prompt_tuning, virtual_tokens=True, shardable=False),
        Method("prefix_tuning", "adapter", _prefix_tuning, virtual_tokens=True, shardable=False),
    )
}


def method_for(name: str) -> Method:
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}", where="train.method", fix=f"use one of: {', '.join(METHODS)}")
    return METHODS[name]


def continuable_methods(parent: str) -> tuple[str, ...]:
    """The methods a run trained with `parent` can be continued with (train/continued.py): any from
    full weights (they are a new base); an adapter only as itself (LoRA's also under QLoRA and back,
    the same adapter over a base in other precision), or merged into full weights by `full`. Other
    pairs have nothing to start from: a LoRA adapter is no prompt to tune."""
    if method_for(parent).peft_config is None:
        return tuple(METHODS)
    same = ("lora", "qlora") if parent in ("lora", "qlora") else (parent,)
    return same + (("full",) if method_for(parent).mergeable else ())


def artefact_kind(method: str) -> str:
    """The folder inside the run that holds the trained weights."""
    return method_for(method).artefact


def quantization_config(spec: TrainSpec, model_spec: ModelSpec) -> Any:
    """The bitsandbytes 4-bit config for qlora (compute in the model's dtype: fp32 on CPUs); None otherwise."""
    if not method_for(spec.method).quantized:
        return None
    from tunesmith.models.loading import quiet_libraries

    quiet_libraries()  # before bitsandbytes is imported: it warns about an optional kernel package on import
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise UserError("train.method qlora needs bitsandbytes", fix="pip install bitsandbytes, or use train.method lora") from None
    from transformers import BitsAndBytesConfig

    from tunesmith.models.loading import pick_device, pick_dtype

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=spec.qlora.quant_type,
        bnb_4bit_use_double_quant=spec.qlora.double_quant,
        bnb_4bit_compute_dtype=pick_dtype(model_spec, pick_device(model_spec)),
    )


def load_for_method(model_spec: ModelSpec, path: str, spec: TrainSpec) -> tuple[Any, Any, Any]:
    """(model, tokenizer, device): the base as the method trains it (4-bit for qlora)."""
    from tunesmith.models.loading import load_model

    model, tokenizer, device = load_model(model_spec, path, quantization=quantization_config(spec, model_spec))
    if method_for(spec.method).quantized:
        _keep_cpu_inference_in_compute_dtype(model)
    return model, tokenizer, device


def _keep_cpu_inference_in_compute_dtype(model: Any) -> None:
    """On CPUs with AVX512-BF16, bitsandbytes switches 4-bit layers in eval mode to a repacked bf16
    kernel: evaluation would then compute differently from training (fp32), and the repacking
    fails outright on layers narrower than its 64-wide block. Keep the path training uses."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def peft_config(spec: TrainSpec, task: str = "causal_lm", tokenizer_path: str | None = None) -> Any:
    from peft import TaskType

    build = method_for(spec.method).peft_config
    if build is None:
        raise ValueError(f"no PEFT config for method {spec.method}")
    return build(spec, TaskType.SEQ_CLS if task == "classification" else TaskType.CAUSAL_LM, tokenizer_path)


def apply_method(model: Any, spec: TrainSpec, task: str = "causal_lm", start: Path | None = None) -> Any:
    """The model with exactly the method's parameters trainable. Seed torch first: adapters start random.
    `start`: an adapter folder (a continued run's parent) the training starts from instead; `full`
    merges it into the weights, an adapter method trains it on."""
    method = method_for(spec.method)
    if start is not None and method.peft_config is None:
        from tunesmith.models.loading import load_adapter

        model = load_adapter(model, start).merge_and_unload()
    if method.peft_config is not None:
        from tunesmith.models.loading import quiet_libraries

        quiet_libraries()
    if method.quantized:
        from peft import prepare_model_for_kbit_training

        # Casts norms and the head to fp32 and lets gradients reach the adapters through the frozen 4-bit layers.
        checkpointing = spec.qlora.gradient_checkpointing or spec.gradient_checkpointing
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
    elif spec.gradient_checkpointing:
        # Non-reentrant: it needs no input that requires grad (a frozen embedding under adapters gives none)
        # and recomputes through tunesmith's own autograd kernels (fused LoRA, per-example attention).
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if method.peft_config is None:
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        return model
    from peft import get_peft_model

    if start is not None:
        from tunesmith.models.loading import load_adapter

        return load_adapter(model, start, trainable=True)
    return get_peft_model(model, peft_config(spec, task, getattr(model, "name_or_path", None)))


def is_prompt_learning(model: Any) -> bool:
    """Prompt and prefix tuning add virtual tokens in PEFT's own forward, which callers must not bypass."""
    config = getattr(model, "active_peft_config", None) if hasattr(model, "peft_config") else None
    return bool(getattr(config, "is_prompt_learning", False))


def load_trained(folder: Path, method: str, base_path: str, model_spec: ModelSpec, spec: TrainSpec, merge: bool = True) -> tuple[Any, Any]:
    """(model, tokenizer) from a run's artefact folder (or a checkpoint), with the tokenizer saved beside it.
    LoRA and DoRA are merged into the base when `merge` (faster generation, same outputs)."""
    from tunesmith.models.loading import load_adapter, load_model, load_tokenizer

    if method_for(method).peft_config is None:
        model, tokenizer, _ = load_model(model_spec, str(folder))
        return model, tokenizer
    base, _, _ = load_for_method(model_spec, base_path, spec)
    model = load_adapter(base, folder)
    if merge and method_for(method).mergeable:
        model = model.merge_and_unload()
    model.eval()
    return model, load_tokenizer(str(folder))


def count_parameters(model: Any) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
