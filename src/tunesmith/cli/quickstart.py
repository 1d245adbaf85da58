"""`tunesmith quickstart`: the whole loop on the embedded defaults, measured end to end."""

from __future__ import annotations

import time

from tunesmith.cli.data_report import summarise_dataset
from tunesmith.cli.report import print_evaluation
from tunesmith.config import EvalSpec, RunSpec
from tunesmith.data.dataset import prepare_dataset
from tunesmith.demo.tickets import write_jsonl
from tunesmith.eval.evaluate import eval_examples, evaluate_model
from tunesmith.eval.forgetting import run_probe, save_forgetting
from tunesmith.eval.report import write_report
from tunesmith.eval.results import Staged, record_evaluation
from tunesmith.models.artefact import load_tuned
from tunesmith.models.loading import load_model, resolve_model_path
from tunesmith.train.recipe import train
from tunesmith.ui import console
from tunesmith.workspace import Workspace

DATASET = "support-tickets"
# Decoding budget: the answer is ~25 tokens, so 48 lets a rambling base model show it rambles without costing minutes.
EVAL = EvalSpec(split="test", max_new_tokens=48, batch_size=16)


def run_quickstart(workspace: Workspace, n_examples: int = 500, epochs: int = 2, seed: int = 0) -> None:
    started = time.perf_counter()
    source = workspace.home / "demo" / f"{DATASET}-{n_examples}-{seed}.jsonl"
    source.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(source, n_examples, seed)
    console.rule("1/4 data")
    dataset = prepare_dataset(source, workspace, name=f"{DATASET}-{n_examples}-{seed}", seed=seed)
    summarise_dataset(dataset)
    spec = RunSpec.model_validate(
        {
            "name": "quickstart",
            "data": {"dataset": dataset.name},
            "train": {"method": "lora", "epochs": epochs, "lr": 2e-3, "batch_size": 4, "evals_per_epoch": 2, "seed": seed},
            "eval": EVAL.model_dump(),
        }
    )
    console.rule("2/4 base model on the test split")
    resolve_model_path(spec.model.name)  # converts the embedded model once, before the clock of any stage
    examples = eval_examples(dataset, EVAL)
    base_model, base_tokenizer, _ = load_model(spec.model)
    base_rows, base_metrics = evaluate_model(base_model, base_tokenizer, examples, EVAL, "base")
    probes = {"base": run_probe(base_model, base_tokenizer)}  # general skills before tuning, for the forgetting check
    del base_model
    console.rule("3/4 fine-tuning (LoRA)")
    result = train(spec, workspace)
    console.rule("4/4 tuned model on the same test split")
    tuned_model, tuned_tokenizer = load_tuned(result.run_dir, result.info, spec.model)
    tuned_rows, tuned_metrics = evaluate_model(tuned_model, tuned_tokenizer, examples, EVAL, "tuned")
    staged = Staged(result.run_dir, EVAL.split)  # base and tuned kept and registered as one evaluation
    staged.add("base", spec.model.name, base_rows, base_metrics)
    staged.add("tuned", result.info.run_id, tuned_rows, tuned_metrics)
    record = record_evaluation(workspace, result.run_dir, result.info, staged, EVAL, {"base": base_rows, "tuned": tuned_rows})
    probes["tuned"] = run_probe(tuned_model, tuned_tokenizer)
    save_forgetting(result.run_dir, probes, EVAL.forgetting_threshold)
    print_evaluation(record)
    report = write_report(result.run_dir)
    console.print(f"run {result.info.run_id}: report {report}, loss curve {result.run_dir / 'loss.png'}")
    console.print(f"quickstart took {time.perf_counter() - started:.0f} s; try: tunesmith chat {result.info.run_id}")
