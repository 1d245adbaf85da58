"""`train.task: classification`: a classifier head on an encoder predicts each example's label.

The text is the example's user turn(s) (classification-format files give exactly one), the
label its `label`. The default model is the embedded all-MiniLM-L6-v2 encoder; any model that
`AutoModelForSequenceClassification` loads works. Methods: full, lora and dora (PEFT's
SEQ_CLS task, which also trains and saves the new head). Training runs in the causal LM's loop
(trainer.TrainingLoop) through `Classification`, so checkpoints, `--resume`, the NaN guard,
budgets and early stopping are the same. Validation reports loss, accuracy and macro-F1; the
checkpoint with the best macro-F1 is kept. The label order is saved in every checkpoint and the
artefact (`labels.json`, and `id2label` in the model config) and in run.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from tunesmith.config import RunSpec
from tunesmith.data.dataset import Dataset
from tunesmith.data.example import Example
from tunesmith.errors import UserError
from tunesmith.eval.classification import scores
from tunesmith.models.classifier import LABELS_FILE, Item, _max_len, collate, encode, load_classifier, predict
from tunesmith.models.loading import resolve_model_path
from tunesmith.models.methods import apply_method, count_parameters
from tunesmith.registry.runfolder import write_config
from tunesmith.train import kernels
from tunesmith.train.batching import Batch, padded_chunks
from tunesmith.train.loop import Items, TrainingLoop, TrainResult, finish, open_run_info, run_interruptible
from tunesmith.train.parallel import strategy
from tunesmith.train.run.estimate import TrainEstimate, estimate_training, print_estimate
from tunesmith.train.run.guards import Budget, Monitor
from tunesmith.train.settings import resolve_settings
from tunesmith.ui import console


def label_names(splits: dict[str, list[Example]], name: str) -> list[str]:
    """Every label in any split, sorted: the head's output order. Unlabelled examples are refused."""
    labels = set()
    for split, examples in splits.items():
        for example in examples:
            if example.label is None:
                raise UserError(
                    f"train.task classification needs a label on every example; example {example.id} in {split} has none",
                    where=f"dataset {name}",
                    fix="prepare a text/label file (format classification), or use train.task causal_lm",
                )
            labels.add(example.label)
    if len(labels) < 2:
        raise UserError(f"a classifier needs at least two labels; dataset {name} has {sorted(labels)}", fix="check the label column")
    return sorted(labels)


def train_classifier(
    spec: RunSpec, dataset: Dataset, replay: list[Any], run_dir: Path, base_path: str, budget: Budget | None = None, resume_from: Path | None = None
) -> TrainResult:
    """load → encode → train in the shared loop (checkpoints, resume, guards, early stopping) → keep the best → save.
    `replay` mixes generative examples back in against forgetting; a classifier has nothing to forget that way."""
    labels = label_names(dataset.splits, dataset.name)
    torch.manual_seed(spec.train.seed)  # before loading: the new head is initialised there
    model, tokenizer, device = load_classifier(spec.model, base_path, labels)
    items = encode_splits(tokenizer, model, dataset.splits, dataset.name, labels, spec.train.max_seq_len)
    cfg, notes = resolve_settings(spec.train, len(items.train), device)
    spec = spec.model_copy(update={"train": cfg})
    if resume_from is None:
        write_config(run_dir, spec, notes)
    model = apply_method(model, cfg, task="classification")
    kernels.switch_on(model, device)
    trainable, total = count_parameters(model)
    console.print(
        f"training a {len(labels)}-class classifier: {trainable:,} of {total:,} parameters ({cfg.method}) on {len(items.train)} examples, device {device}"
    )
    objective = Classification(labels)
    if resume_from is None:
        print_estimate(estimate_training(model, tokenizer, device, cfg, items.train, items.validation, objective=objective), run_dir)
    info = open_run_info(run_dir, spec, dataset, base_path, resuming=resume_from is not None, labels=labels)
    loop = TrainingLoop(model, tokenizer, device, cfg, items, run_dir, info, budget, spec, objective=objective, strategy=strategy.for_launch())
    if resume_from is not None:
        loop.restore(resume_from)
    return finish(loop, *run_interruptible(loop))


def encode_splits(tokenizer: Any, model: Any, splits: dict[str, list[Example]], name: str, labels: list[str], max_seq_len: int) -> Items:

    label_ids = {label: i for i, label in enumerate(labels)}
    max_len = _max_len(tokenizer, model, max_seq_len)
    train_items = encode(tokenizer, splits["train"], label_ids, max_len)
    if not train_items:
        raise UserError(f"dataset {name} has no training examples", fix="check the split ratios")
    return Items(train_items, encode(tokenizer, splits.get("validation", []), label_ids, max_len), dropped=[])


class Classification:
    """The classifier's part of the shared training loop: cross-entropy on the head's logits, one
    target per example; validation scores accuracy and macro-F1, and the best checkpoint is the one
    with the best macro-F1 (then the lower validation loss)."""

    packs = False  # the head pools one sequence per row; packed examples would be read as one

    def __init__(self, labels: list[str]):
        self.labels = labels
        self.files = {LABELS_FILE: json.dumps(labels)}

    def tensors(self, batch: list[Item], pad_id: int) -> list[dict[str, torch.Tensor]]:
        """This process's share of the batch, in forward passes of at most train.tokens_per_forward tokens
        (padding included): exact, since the step divides by the whole batch's examples."""
        local = batch.local() if isinstance(batch, Batch) else list(batch)
        max_tokens = batch.max_tokens if isinstance(batch, Batch) else None
        return [collate(chunk, pad_id) for chunk in padded_chunks(local, max_tokens)]

    def summed_loss(self, model: Any, tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        logits = model(input_ids=tensors["input_ids"], attention_mask=tensors["attention_mask"]).logits
        return F.cross_entropy(logits.float(), tensors["labels"], reduction="sum"), len(tensors["labels"])

    def validate(self, model: Any, items: list[Item], pad_id: int, device: torch.device, batch_size: int) -> dict[str, Any]:
        if not items:
            return {}
        predicted, loss = predict(model, items, pad_id, device, batch_size)
        model.train()
        found = scores([i.label for i in items], predicted, len(self.labels))
        return {"val_loss": round(loss / len(items), 5), **{f"val_{k}": v for k, v in found.items()}}

    def score(self, found: dict[str, Any]) -> tuple[list[float] | None, dict[str, float] | None]:
        if not found:
            return None, None
        return [found["val_f1_macro"], -found["val_loss"]], {"accuracy": found["val_accuracy"], "f1_macro": found["val_f1_macro"]}

    def best_text(self, monitor: Monitor) -> str:
        return f"macro-F1 than {(monitor.best_metrics or {}).get('f1_macro')}"


def estimate_classifier(spec: RunSpec, splits: dict[str, list[Example]], name: str) -> TrainEstimate:
    """`train --dry-run` for a classifier: the run's own model, head, settings and batches, timed; nothing written."""
    labels = label_names(splits, name)
    torch.manual_seed(spec.train.seed)
    model, tokenizer, device = load_classifier(spec.model, resolve_model_path(spec.model.name), labels)
    items = encode_splits(tokenizer, model, splits, name, labels, spec.train.max_seq_len)
    cfg, _ = resolve_settings(spec.train, len(items.train), device)
    model = apply_method(model, cfg, task="classification")
    console.print(f"timing a few optimizer steps on {device} for the estimate")
    estimate = estimate_training(model, tokenizer, device, cfg, items.train, items.validation, objective=Classification(labels))
    print_estimate(estimate)
    return estimate
