import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score

from tunesmith.config import EvalSpec
from tunesmith.data.dataset import load_dataset
from tunesmith.errors import UserError
from tunesmith.models.artefact import load_trained_classifier
from tunesmith.models.classifier import Item, _max_len, example_text, predict
from tunesmith.registry.runfolder import RunInfo, load_run_info, write_json
from tunesmith.ui import console
from tunesmith.workspace import Workspace


def scores(truth: list[int], predicted: list[int], n_labels: int) -> dict[str, float]:
    return {
        "accuracy": round(float(accuracy_score(truth, predicted)), 4),
        "f1_macro": round(float(f1_score(truth, predicted, labels=list(range(n_labels)), average="macro", zero_division=0)), 4),
    }


def evaluate_classifier_run(workspace: Workspace, run_dir: Path, info: RunInfo, spec: EvalSpec, compare_base: bool) -> dict[str, dict[str, float]]:
    """load → predict the split → accuracy, F1, confusion matrix → eval/ and the registry."""
    from tunesmith.eval.metrics import compute_metrics
    from tunesmith.eval.results import save_evaluation
    from tunesmith.registry.runfolder import read_config

    labels = info.labels or []
    examples = load_dataset(workspace, info.dataset).splits[spec.split]
    examples = examples[: spec.limit] if spec.limit else examples
    if not examples:
        raise UserError(f"the {spec.split} split of dataset {info.dataset} is empty", fix="evaluate --split validation, or prepare more data")
    run_spec = read_config(run_dir)
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
    metrics.update(
        n=float(len(examples)),
        exact_match=metrics["accuracy"],
        examples_per_s=round(len(examples) / seconds, 2) if seconds > 0 else 0.0,
        majority_class_accuracy=round(sum(t == majority for t in truth) / len(truth), 4),
    )
    rows = [
        {"id": e.id, "prompt": example_text(e), "reference": t, "prediction": g, "exact_match": float(t == g), "label": t, "predicted_label": g}
        for e, t, g in zip(examples, truth, guesses)
    ]
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


def classify_texts(workspace: Workspace, run_ref: str, texts: list[str], batch_size: int = 32) -> list[dict[str, Any]]:
    """`tunesmith classify`: each text's label and its probability (softmax over the head's labels),
    with the text truncated as in training."""
    from tunesmith.registry.runfolder import find_run

    return classify_run(find_run(workspace, run_ref), texts, batch_size)


@torch.no_grad()
def classify_run(run_dir: Path, texts: list[str], batch_size: int = 32) -> list[dict[str, Any]]:
    """classify_texts for a run folder already found."""
    from tunesmith.registry.runfolder import read_config

    info = load_run_info(run_dir)
    if info.task != "classification":
        raise UserError(f"run {info.run_id} writes answers; it has no labels to pick", fix=f'ask it with `tunesmith generate {info.run_id} --prompt "..."`')
    run_spec = read_config(run_dir)
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
            found.append(
                {"text": text, "label": labels[best], "probability": round(row[best], 4), "probabilities": {name: round(p, 4) for name, p in zip(labels, row)}}
            )
    return found
