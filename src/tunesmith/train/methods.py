"""Training methods: which parameters learn. LoRA wraps the base in PEFT adapters; full trains everything."""

from __future__ import annotations

from typing import Any

from tunesmith.config import TrainSpec


def apply_method(model: Any, spec: TrainSpec) -> Any:
    if spec.method == "full":
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        return model
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=spec.lora.r,
        lora_alpha=spec.lora.alpha,
        lora_dropout=spec.lora.dropout,
        target_modules=spec.lora.target_modules,
    )
    return get_peft_model(model, config)


def count_parameters(model: Any) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
