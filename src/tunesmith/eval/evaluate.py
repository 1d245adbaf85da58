"""`tunesmith eval`: the tuned model (and, if asked, its base) on the same examples, prompts and decoding."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tunesmith.config import EvalSpec, ModelSpec, RunSpec, validate_spec
from tunesmith.data.dataset import Dataset, load_dataset
from tunesmith.data.example import Example
from tunesmith.eval.generate import generate_batched
from tunesmith.eval.metrics import aggregate, score_example
from tunesmith.models.loading import load_model
from tunesmith.registry.store import Registry
from tunesmith.runfolder import RunInfo, load_run_info, write_json
from tunesmith.train.collate import end_of_turn_ids
from tunesmith.ui import console, progress
from tunesmith.workspace import Workspace


def load_run_spec_from_folder(run_dir: Path) -> RunSpec:
    data = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    data.pop("versions", None)
    return validate_spec(RunSpec, data, str(run_dir / "config.yaml"))


def load_tuned(run_dir: Path, info: RunInfo, model_spec: ModelSpec) -> tuple[Any, Any]:
    """The tuned model with the tokenizer (and so the chat template) saved beside its weights at training.
    Each method is loaded as `train.methods.load_trained` says (LoRA/DoRA merged, QLoRA over its 4-bit base)."""
    from tunesmith.train.methods import load_trained

    train_spec = load_run_spec_from_folder(run_dir).train  # qlora's quantisation settings
    return load_trained(run_dir / info.artefact, info.method, info.base_model_path, model_spec, train_spec)


def load_base(info: RunInfo, model_spec: ModelSpec) -> tuple[Any, Any]:
    model, tokenizer, _ = load_model(model_spec, info.base_model_path)
    return model, tokenizer


def evaluate_model(model: Any, tokenizer: Any, examples: list[Example], spec: EvalSpec, label: str) -> tuple[list[dict], dict[str, float]]:
    eot = end_of_turn_ids(tokenizer)
    with progress() as bar:
        task = bar.add_task(f"evaluating {label}", total=len(examples), info="")
        outputs, seconds = generate_batched(
            model, tokenizer, examples, eot, max_new_tokens=spec.max_new_tokens, batch_size=spec.batch_size,
            on_batch=lambda n: bar.update(task, advance=n),
        )
    rows = []
    for example, output in zip(examples, outputs):
        scores = score_example(output, example.reference or "", example.label)
        prompt = example.prompt_messages[-1].content if example.prompt_messages else ""
        rows.append({"id": example.id, "prompt": prompt, "reference": example.reference, "prediction": output, **scores})
    return rows, aggregate(rows, seconds)


def eval_examples(dataset: Dataset, spec: EvalSpec) -> list[Example]:
    examples = [e for e in dataset.splits[spec.split] if e.reference is not None]
    return examples[: spec.limit] if spec.limit else examples


def evaluate_run(workspace: Workspace, run_dir: Path, spec: EvalSpec, compare_base: bool) -> dict[str, dict[str, float]]:
    """load → generate → score → write eval/ and the registry. Returns metrics per model id."""
    info = load_run_info(run_dir)
    if info.task == "classification":
        from tunesmith.train.classify import evaluate_classifier_run

        return evaluate_classifier_run(workspace, run_dir, info, spec, compare_base)
    run_spec = load_run_spec_from_folder(run_dir)
    examples = eval_examples(load_dataset(workspace, info.dataset), spec)
    loaders = {"tuned": lambda: load_tuned(run_dir, info, run_spec.model)}
    if compare_base:
        loaders = {"base": lambda: load_base(info, run_spec.model), **loaders}
    results, rows_by_model = {}, {}
    for model_id, loader in loaders.items():
        model, tokenizer = loader()
        rows_by_model[model_id], results[model_id] = evaluate_model(model, tokenizer, examples, spec, model_id)
        del model
        save_evaluation(workspace, run_dir, info, spec.split, model_id, rows_by_model[model_id], results[model_id])
    if compare_base:
        save_comparison(run_dir, spec.split, rows_by_model["base"], rows_by_model["tuned"])
    return results


def save_comparison(run_dir: Path, split: str, base_rows: list[dict], tuned_rows: list[dict]) -> dict:
    """Is tuned better than base beyond chance? Paired on the same examples: exact-match delta with a
    95% bootstrap interval, McNemar's exact test, and which examples got better or worse."""
    from tunesmith.eval.significance import changed_examples, compare_paired

    ids = [r["id"] for r in tuned_rows]
    base, tuned = [r["exact_match"] for r in base_rows], [r["exact_match"] for r in tuned_rows]
    improved, regressed = changed_examples(ids, base, tuned)
    comparison = {"metric": "exact_match", **compare_paired(base, tuned).model_dump(), "improved_ids": improved, "regressed_ids": regressed}
    summary_path = run_dir / "eval" / "report.json"
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    summary.setdefault("comparisons", {})[split] = comparison
    write_json(summary_path, summary)
    console.print(
        f"exact match tuned - base: {comparison['delta']:+.3f} (95% CI {comparison['ci_low']:+.3f} to {comparison['ci_high']:+.3f}), "
        f"McNemar p = {comparison['p_value']:.2g}; {len(improved)} example(s) improved, {len(regressed)} regressed"
    )
    return comparison


def save_evaluation(workspace: Workspace, run_dir: Path, info: RunInfo, split: str, model_id: str, rows: list[dict], metrics: dict[str, float]) -> None:
    folder = run_dir / "eval"
    folder.mkdir(exist_ok=True)
    (folder / f"{split}-{model_id}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    summary_path = folder / "report.json"
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.exists() else {}
    summary.setdefault(split, {})[model_id] = {"model": info.base_model if model_id == "base" else info.run_id, "metrics": metrics}
    write_json(summary_path, summary)
    Registry(workspace.registry_db).add_evaluation(info.run_id, model_id, split, len(rows), metrics)
