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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score

from tunesmith.config import EvalSpec, ModelSpec, RunSpec
from tunesmith.data.dataset import Dataset, load_dataset
from tunesmith.data.example import Example
from tunesmith.errors import UserError
from tunesmith.runfolder import RunInfo, load_run_info, save_run_info, write_config, write_json
from tunesmith.train.collate import Batch, padded_chunks
from tunesmith.train.estimate import estimate_training, print_estimate
from tunesmith.train.guards import Budget, Monitor
from tunesmith.train.methods import apply_method, artefact_kind, count_parameters
from tunesmith.train.settings import resolve_settings
from tunesmith.ui import console
from tunesmith.workspace import Workspace

if TYPE_CHECKING:
    from tunesmith.train.estimate import TrainEstimate
    from tunesmith.train.trainer import Items, TrainResult

LABELS_FILE = "labels.json"


@dataclass
class Item:
    input_ids: list[int]
    label: int
    example_id: str

    @property
    def n_trained(self) -> int:
        return 1  # one target per example: the loop weighs every example the same, whatever the accumulation


def example_text(example: Example) -> str:
    """What the classifier reads: the user turns, without a system prompt shared by every example."""
    return "\n".join(m.content for m in example.prompt_messages if m.role == "user")


def label_names(splits: dict[str, list[Example]], name: str) -> list[str]:
    """Every label in any split, sorted: the head's output order. Unlabelled examples are refused."""
    labels = set()
    for split, examples in splits.items():
        for example in examples:
            if example.label is None:
                raise UserError(
                    f"train.task classification needs a label on every example; example {example.id} in {split} has none",
                    where=f"dataset {name}", fix="prepare a text/label file (format classification), or use train.task causal_lm",
                )
            labels.add(example.label)
    if len(labels) < 2:
        raise UserError(f"a classifier needs at least two labels; dataset {name} has {sorted(labels)}", fix="check the label column")
    return sorted(labels)


def load_classifier(spec: ModelSpec, path: str, labels: list[str]) -> tuple[Any, Any, torch.device]:
    """(model, tokenizer, device): the encoder with a head of len(labels) outputs (new unless the folder has one)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tunesmith.models.loading import from_pretrained, pick_device, pick_dtype, quiet_libraries

    quiet_libraries()
    device = pick_device(spec)
    try:
        tokenizer = from_pretrained(AutoTokenizer, path)
        model = from_pretrained(
            AutoModelForSequenceClassification, path, num_labels=len(labels), id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)}, dtype=pick_dtype(spec, device), use_safetensors=True,
        )
    except (OSError, ValueError) as exc:
        raise UserError(f"could not load '{spec.name}' as a classifier: {str(exc).splitlines()[0]}", fix="use an encoder such as all-minilm-l6-v2, a local HF folder or a hub id") from None
    if tokenizer.pad_token is None:  # decoder models: pad with end-of-sequence, and tell the head where rows end
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(device), tokenizer, device


def encode(tokenizer: Any, examples: list[Example], label_ids: dict[str, int], max_len: int) -> list[Item]:
    texts = [example_text(e) for e in examples]
    ids = tokenizer(texts, truncation=True, max_length=max_len)["input_ids"] if texts else []
    return [Item(i, label_ids[e.label], e.id) for i, e in zip(ids, examples)]  # type: ignore[index]


def collate(items: list[Item], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(item.input_ids) for item in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, item in enumerate(items):
        ids[row, : len(item.input_ids)] = torch.tensor(item.input_ids)
        mask[row, : len(item.input_ids)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([item.label for item in items])}


def _max_len(tokenizer: Any, model: Any, wanted: int) -> int:
    limits = [wanted, getattr(model.config, "max_position_embeddings", wanted)]
    if 0 < getattr(tokenizer, "model_max_length", 0) < 1_000_000:
        limits.append(tokenizer.model_max_length)
    return min(limits)


def train_classifier(
    spec: RunSpec, dataset: Dataset, run_dir: Path, base_path: str, budget: Budget | None = None, resume_from: Path | None = None
) -> "TrainResult":
    """load → encode → train in the shared loop (checkpoints, resume, guards, early stopping) → keep the best → save."""
    from tunesmith.train.trainer import TrainingLoop, _finish, _run_interruptible

    labels = label_names(dataset.splits, dataset.name)
    torch.manual_seed(spec.train.seed)  # before loading: the new head is initialised there
    model, tokenizer, device = load_classifier(spec.model, base_path, labels)
    items = encode_splits(tokenizer, model, dataset.splits, dataset.name, labels, spec.train.max_seq_len)
    cfg, notes = resolve_settings(spec.train, len(items.train), device)
    spec = spec.model_copy(update={"train": cfg})
    if resume_from is None:
        write_config(run_dir, spec, notes)
    model = apply_method(model, cfg, task="classification")
    trainable, total = count_parameters(model)
    console.print(f"training a {len(labels)}-class classifier: {trainable:,} of {total:,} parameters ({cfg.method}) on {len(items.train)} examples, device {device}")
    objective = Classification(labels)
    if resume_from is None:
        print_estimate(estimate_training(model, tokenizer, device, cfg, items.train, items.validation, objective=objective), run_dir)
    info = _run_info(spec, dataset, run_dir, base_path, labels, resuming=resume_from is not None)
    loop = TrainingLoop(model, tokenizer, device, cfg, items, run_dir, info, budget, spec, objective=objective)
    if resume_from is not None:
        loop.restore(resume_from)
    return _finish(loop, *_run_interruptible(loop))


def encode_splits(tokenizer: Any, model: Any, splits: dict[str, list[Example]], name: str, labels: list[str], max_seq_len: int) -> "Items":
    from tunesmith.train.trainer import Items

    label_ids = {label: i for i, label in enumerate(labels)}
    max_len = _max_len(tokenizer, model, max_seq_len)
    train_items = encode(tokenizer, splits["train"], label_ids, max_len)
    if not train_items:
        raise UserError(f"dataset {name} has no training examples", fix="check the split ratios")
    return Items(train_items, encode(tokenizer, splits.get("validation", []), label_ids, max_len), dropped=[])


def estimate_classifier(spec: RunSpec, splits: dict[str, list[Example]], name: str) -> "TrainEstimate":
    """`train --dry-run` for a classifier: the run's own model, head, settings and batches, timed; nothing written."""
    from tunesmith.models.loading import resolve_model_path

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


def _run_info(spec: RunSpec, dataset: Dataset, run_dir: Path, base_path: str, labels: list[str], resuming: bool) -> RunInfo:
    info = load_run_info(run_dir) if resuming else RunInfo(
        run_id=run_dir.name, status="running", base_model=spec.model.name, base_model_path=base_path, method=spec.train.method,
        artefact=artefact_kind(spec.train.method), dataset=dataset.name, dataset_version=dataset.version, end_of_turn_ids=[],
        task="classification", labels=labels,
    )
    info.status, info.stop_reason = "running", None
    save_run_info(run_dir, info)
    return info


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


@torch.no_grad()
def predict(model, items: list[Item], pad_id: int, device, batch_size: int) -> tuple[list[int], float]:
    """Predicted class per item (in order) and the summed cross-entropy against the items' labels."""
    model.eval()
    predicted, loss = [], 0.0
    for start in range(0, len(items), batch_size):
        tensors = {k: v.to(device) for k, v in collate(items[start : start + batch_size], pad_id).items()}
        logits = model(input_ids=tensors["input_ids"], attention_mask=tensors["attention_mask"]).logits.float()
        loss += float(F.cross_entropy(logits, tensors["labels"], reduction="sum"))
        predicted.extend(logits.argmax(-1).tolist())
    return predicted, loss


def scores(truth: list[int], predicted: list[int], n_labels: int) -> dict[str, float]:
    return {
        "accuracy": round(float(accuracy_score(truth, predicted)), 4),
        "f1_macro": round(float(f1_score(truth, predicted, labels=list(range(n_labels)), average="macro", zero_division=0)), 4),
    }


def load_trained_classifier(folder: Path, info: RunInfo, model_spec: ModelSpec) -> tuple[Any, Any, torch.device]:
    """A classification run's artefact: the saved model, or the base encoder with the adapter (and head) merged."""
    from transformers import AutoTokenizer

    from tunesmith.files import read_json
    from tunesmith.models.loading import DAMAGED_WEIGHTS_FIX, from_pretrained, load_adapter

    labels = read_json(folder / LABELS_FILE, fix=DAMAGED_WEIGHTS_FIX)
    if info.method == "full":
        return load_classifier(model_spec, str(folder), labels)
    base, _, device = load_classifier(model_spec, info.base_model_path, labels)
    model = load_adapter(base, folder).merge_and_unload()
    return model, from_pretrained(AutoTokenizer, folder), device


def evaluate_classifier_run(workspace: Workspace, run_dir: Path, info: RunInfo, spec: EvalSpec, compare_base: bool) -> dict[str, dict[str, float]]:
    """load → predict the split → accuracy, F1, confusion matrix → eval/ and the registry."""
    from tunesmith.eval.evaluate import save_evaluation, load_run_spec_from_folder
    from tunesmith.eval.metrics import compute_metrics

    labels = info.labels or []
    examples = load_dataset(workspace, info.dataset).splits[spec.split]
    examples = examples[: spec.limit] if spec.limit else examples
    if not examples:
        raise UserError(f"the {spec.split} split of dataset {info.dataset} is empty", fix="evaluate --split validation, or prepare more data")
    run_spec = load_run_spec_from_folder(run_dir)
    model, tokenizer, device = load_trained_classifier(run_dir / info.artefact, info, run_spec.model)
    # A label the head does not know (absent from the dataset at training) is scored as wrong, never skipped.
    known = {name: i for i, name in enumerate(labels)}
    texts = tokenizer([example_text(e) for e in examples], truncation=True, max_length=_max_len(tokenizer, model, run_spec.train.max_seq_len))["input_ids"]
    items = [Item(ids, known.get(e.label or "", 0), e.id) for ids, e in zip(texts, examples)]
    started = time.perf_counter()
    predicted, _ = predict(model, items, tokenizer.pad_token_id, device, spec.batch_size)
    seconds = time.perf_counter() - started
    truth, guesses = [e.label or "" for e in examples], [labels[i] for i in predicted]
    found = compute_metrics(guesses, truth, ["accuracy", "f1", "confusion_matrix"], labels=labels)
    majority = max(labels, key=lambda name: sum(t == name for t in truth))
    metrics = {k: round(v, 4) for k, v in found.items() if isinstance(v, float)}
    metrics.update(n=float(len(examples)), exact_match=metrics["accuracy"], examples_per_s=round(len(examples) / seconds, 2) if seconds > 0 else 0.0,
                   majority_class_accuracy=round(sum(t == majority for t in truth) / len(truth), 4))
    rows = [{"id": e.id, "prompt": example_text(e), "reference": t, "prediction": g, "exact_match": float(t == g), "label": t, "predicted_label": g}
            for e, t, g in zip(examples, truth, guesses)]
    save_evaluation(workspace, run_dir, info, spec.split, "tuned", rows, metrics)
    _add_to_report(run_dir, spec.split, found)
    _print_confusion(found["confusion_matrix"])
    if compare_base:
        console.print("[yellow]a classifier's base has an untrained head: compare with majority_class_accuracy (always answering the commonest label) instead")
    return {"tuned": metrics}


def _add_to_report(run_dir: Path, split: str, found: dict[str, Any]) -> None:
    path = run_dir / "eval" / "report.json"
    report = json.loads(path.read_text(encoding="utf-8"))
    report[split]["tuned"].update(confusion_matrix=found["confusion_matrix"], per_class=found["per_class"])
    write_json(path, report)


def _print_confusion(confusion: dict[str, Any]) -> None:
    from tunesmith.eval.score import confusion_table
    from tunesmith.ui import out

    out.print(confusion_table(confusion))



@torch.no_grad()
def classify_texts(workspace: Workspace, run_ref: str, texts: list[str], batch_size: int = 32) -> list[dict[str, Any]]:
    """`tunesmith classify`: each text's label and its probability (softmax over the head's labels),
    with the text truncated as in training."""
    from tunesmith.eval.evaluate import load_run_spec_from_folder
    from tunesmith.runfolder import find_run

    run_dir = find_run(workspace, run_ref)
    info = load_run_info(run_dir)
    if info.task != "classification":
        raise UserError(f"run {info.run_id} writes answers; it has no labels to pick", fix=f"ask it with `tunesmith generate {info.run_id} --prompt \"...\"`")
    run_spec = load_run_spec_from_folder(run_dir)
    model, tokenizer, device = load_trained_classifier(run_dir / info.artefact, info, run_spec.model)
    model.eval()
    labels = info.labels or []
    max_len = _max_len(tokenizer, model, run_spec.train.max_seq_len)
    found = []
    for start in range(0, len(texts), batch_size):
        batch = texts[start : start + batch_size]
        encoded = tokenizer(batch, truncation=True, max_length=max_len, padding=True, return_tensors="pt").to(device)
        probabilities = F.softmax(model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]).logits.float(), dim=-1)
        for text, row in zip(batch, probabilities.tolist()):
            best = max(range(len(row)), key=row.__getitem__)
            found.append({"text": text, "label": labels[best], "probability": round(row[best], 4),
                          "probabilities": {name: round(p, 4) for name, p in zip(labels, row)}})
    return found
