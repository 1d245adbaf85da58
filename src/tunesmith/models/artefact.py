from pathlib import Path
from typing import Any

import torch

from tunesmith.config import ModelSpec
from tunesmith.models.classifier import LABELS_FILE, load_classifier
from tunesmith.models.loading import load_model
from tunesmith.models.methods import load_trained, method_for
from tunesmith.registry.runfolder import RunInfo, read_config


def load_tuned(run_dir: Path, info: RunInfo, model_spec: ModelSpec) -> tuple[Any, Any]:
    """The tuned model with the tokenizer (and so the chat template) saved beside its weights at training.
    Each method is loaded as `methods.load_trained` says (LoRA/DoRA merged, QLoRA over its 4-bit base)."""
    train_spec = read_config(run_dir).train  # qlora's quantisation settings
    return load_trained(run_dir / info.artefact, info.method, info.base_model_path, model_spec, train_spec)


def load_base(info: RunInfo, model_spec: ModelSpec) -> tuple[Any, Any]:
    model, tokenizer, _ = load_model(model_spec, info.base_model_path)
    return model, tokenizer


def load_trained_classifier(folder: Path, info: RunInfo, model_spec: ModelSpec) -> tuple[Any, Any, torch.device]:
    """A classification run's artefact: the saved model, or the base encoder with the adapter (and head) merged."""
    from transformers import AutoTokenizer

    from tunesmith.files import read_json
    from tunesmith.models.loading import DAMAGED_WEIGHTS_FIX, from_pretrained, load_adapter

    labels = read_json(folder / LABELS_FILE, fix=DAMAGED_WEIGHTS_FIX)
    if method_for(info.method).peft_config is None:
        return load_classifier(model_spec, str(folder), labels)
    base, _, device = load_classifier(model_spec, info.base_model_path, labels)
    model = load_adapter(base, folder).merge_and_unload()
    return model, from_pretrained(AutoTokenizer, folder), device


def load_run_model(run_dir: Path, info: RunInfo, model_spec: ModelSpec) -> tuple[Any, Any]:
    """(model, tokenizer) of a trained run, whatever it trained: a classifier with its head, or a
    generative model as its method says (LoRA/DoRA merged, QLoRA over its 4-bit base)."""
    if info.task == "classification":
        model, tokenizer, _ = load_trained_classifier(run_dir / info.artefact, info, model_spec)
        return model, tokenizer
    return load_tuned(run_dir, info, model_spec)
