"""`tunesmith eval`: the tuned model and whatever it is compared with (its base, prompting baselines,
other runs) on the same examples, prompts and decoding; every metric compared with a 95% interval."""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tunesmith.config import EvalSpec, ModelSpec, RunSpec
from tunesmith.data.dataset import Dataset, load_dataset
from tunesmith.data.example import Example
from tunesmith.errors import UserError
from tunesmith.eval.generate import generate_batched
from tunesmith.eval.metrics import (aggregate, compute_metrics, definition, detect_task, example_scores, headline_metric, metric_label,
                                    resolve_metric_names, score_example)
from tunesmith.eval.results import Staged, evaluation_folder, publish
from tunesmith.models.loading import load_model
from tunesmith.registry.store import Registry
from tunesmith.runfolder import RunInfo, find_run, load_run_info
from tunesmith.train.collate import end_of_turn_ids
from tunesmith.ui import console, progress
from tunesmith.workspace import Workspace

PROMPT_MODELS = ("base", "few-shot", "system")  # the base model's weights, prompted three ways


def load_run_spec_from_folder(run_dir: Path) -> RunSpec:
    from tunesmith.runfolder import read_config

    return read_config(run_dir)


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
    """generate → score each answer → the metrics (chosen by task or named in spec.metrics) → reference perplexity."""
    eot = end_of_turn_ids(tokenizer)
    with progress() as bar:
        task = bar.add_task(f"evaluating {label}", total=len(examples), info="")
        outputs, seconds = generate_batched(
            model, tokenizer, examples, eot, max_new_tokens=spec.max_new_tokens, batch_size=spec.batch_size,
            on_batch=lambda n: bar.update(task, advance=n), temperature=spec.temperature, top_p=spec.top_p, seed=spec.seed,
        )
    references = [e.reference or "" for e in examples]
    names = resolve_metric_names(spec.metrics, references)
    per_example = example_scores(outputs, references, names)
    rows = []
    for example, output, extra in zip(examples, outputs, per_example):
        prompt = example.prompt_messages[-1].content if example.prompt_messages else ""
        rows.append({"id": example.id, "prompt": prompt, "reference": example.reference, "prediction": output,
                     **extra, **score_example(output, example.reference or "", example.label)})
    metrics = aggregate(rows, seconds)
    corpus = compute_metrics(outputs, references, names, custom=spec.custom_metrics)
    metrics.update({k: round(float(v), 4) for k, v in corpus.items() if isinstance(v, (int, float))})
    if spec.perplexity:
        from tunesmith.eval.perplexity import perplexity, reference_nll

        scored = reference_nll(model, tokenizer, examples, batch_size=spec.batch_size)
        for row, (nll, tokens) in zip(rows, scored):
            row.update(ref_nll=round(nll, 4), ref_tokens=tokens)
        metrics["perplexity"] = round(perplexity(scored), 4)
    return rows, metrics


def eval_examples(dataset: Dataset, spec: EvalSpec) -> list[Example]:
    examples = [e for e in dataset.splits[spec.split] if e.reference is not None]
    return examples[: spec.limit] if spec.limit else examples


@dataclass
class Job:
    """One model load, then each prompt variant evaluated on it (and the general-skills probe, if asked)."""

    load: Callable[[], tuple[Any, Any]]
    variants: dict[str, list[Example]]
    names: dict[str, str]  # model id -> what it is, for the report
    probe: bool = False


@dataclass
class Plan:
    jobs: list[Job] = field(default_factory=list)


def plan_jobs(workspace: Workspace, run_dir: Path, info: RunInfo, run_spec: RunSpec, dataset: Dataset, spec: EvalSpec, *,
              compare_base: bool, compare_runs: list[str], baselines: list[str], forgetting: bool) -> list[Job]:
    from tunesmith.eval.baselines import few_shot, with_system_prompt

    examples = eval_examples(dataset, spec)
    if not examples:
        raise UserError(f"the {spec.split} split has no examples with a reference answer", fix="evaluate another split (--split)")
    base_variants: dict[str, list[Example]] = {}
    if compare_base or baselines:
        base_variants["base"] = examples
    if "few-shot" in baselines:
        base_variants["few-shot"] = few_shot(examples, dataset.splits["train"], spec.shots, spec.seed)
    if "system" in baselines:
        base_variants["system"] = with_system_prompt(examples, spec.system_prompt)
    jobs = []
    if base_variants or forgetting:
        names = {"base": info.base_model, "few-shot": f"{info.base_model} + {spec.shots} shots",
                 "system": f"{info.base_model} + system prompt"}
        jobs.append(Job(lambda: load_base(info, run_spec.model), base_variants, names, probe=forgetting))
    jobs.append(Job(lambda: load_tuned(run_dir, info, run_spec.model), {"tuned": examples}, {"tuned": info.run_id}, probe=forgetting))
    for ref in compare_runs:
        other_dir = find_run(workspace, ref)
        other, other_spec = load_run_info(other_dir), load_run_spec_from_folder(other_dir)
        if other.run_id == info.run_id:
            raise UserError(f"--compare {ref} is this run itself", fix="compare with another run id (`tunesmith runs list`)")
        if other.dataset_version != info.dataset_version:
            console.print(f"[yellow]note:[/] {other.run_id} was trained on dataset version {other.dataset_version}, this run on "
                          f"{info.dataset_version}; both are scored on this run's {spec.split} examples")
        jobs.append(Job(lambda d=other_dir, o=other, s=other_spec: load_tuned(d, o, s.model), {other.run_id: examples}, {other.run_id: other.run_id}))
    return jobs


def evaluate_run(workspace: Workspace, run_dir: Path, spec: EvalSpec, compare_base: bool = False, *, compare_runs: list[str] | None = None,
                 baselines: list[str] | None = None, forgetting: bool = False) -> dict[str, dict[str, float]]:
    """load → generate → score → compare → keep the evaluation (eval/evaluations/<id>/, report.json) and register it.
    Returns metrics per model id. Nothing earlier is touched until the whole evaluation is written."""
    info = load_run_info(run_dir)
    if info.task == "classification":
        from tunesmith.train.classify import evaluate_classifier_run

        return evaluate_classifier_run(workspace, run_dir, info, spec, compare_base)
    run_spec = load_run_spec_from_folder(run_dir)
    dataset = load_dataset(workspace, info.dataset)
    jobs = plan_jobs(workspace, run_dir, info, run_spec, dataset, spec, compare_base=compare_base, compare_runs=compare_runs or [],
                     baselines=baselines or [], forgetting=forgetting)
    staged = Staged(run_dir, spec.split)
    results, rows_by_model, names, probes = {}, {}, {}, {}
    try:
        for job in jobs:
            model, tokenizer = job.load()
            for model_id, examples in job.variants.items():
                rows_by_model[model_id], results[model_id] = evaluate_model(model, tokenizer, examples, spec, model_id)
                names[model_id] = job.names[model_id]
                staged.add(model_id, names[model_id], rows_by_model[model_id], results[model_id])
                _test_kill("eval", len(staged.models))
            if job.probe:
                from tunesmith.eval.forgetting import run_probe

                probes["base" if "tuned" not in job.variants else "tuned"] = run_probe(model, tokenizer)
            del model
        record_evaluation(workspace, run_dir, info, staged, spec, rows_by_model)
    except BaseException:
        staged.discard()
        raise
    if probes:
        from tunesmith.eval.forgetting import save_forgetting

        save_forgetting(run_dir, probes, spec.forgetting_threshold)
    return results


def _test_kill(point: str, step: int) -> None:
    """Test hook, like training's: TUNESMITH_TEST_KILL_AT=eval:1 SIGKILLs the process once the first
    model's answers are staged (as a power cut would). Inert unless set."""
    if os.environ.get("TUNESMITH_TEST_KILL_AT") == f"{point}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def task_of(rows: list[dict]) -> str:
    """The task as docs/evaluation.md names it (json | fields | classification | text), from the references."""
    labels = sorted({str(r["label"]) for r in rows if r.get("label") is not None}) or None
    return detect_task([r.get("reference") or "" for r in rows], labels)


def compare_models(spec: EvalSpec, rows_by_model: dict[str, list[dict]], results: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Tuned against every other model evaluated, on every metric; the verdicts on the task's headline
    metric; and the plain verdict against the best prompt. Returns the sections of the evaluation record."""
    from tunesmith.eval.compare import comparison_table, compare_rows, needed_examples, other_changes, size_note, verdict_line

    if "tuned" not in rows_by_model:  # a single model evaluated on its own is the one reported
        only = next(iter(rows_by_model))
        rows_by_model, results = {"tuned": rows_by_model[only]}, {"tuned": results[only]}
    task = task_of(rows_by_model["tuned"])
    headline = headline_metric(task, results["tuned"])
    label = metric_label(headline)
    record: dict[str, Any] = {"task": task, "headline": {"metric": headline, "label": label, "task": task}}
    versus: dict[str, Any] = {}
    verdicts: list[str] = []
    power: dict[str, Any] = {}
    for other in [m for m in rows_by_model if m != "tuned"]:
        versus[other] = compare_rows(rows_by_model[other], rows_by_model["tuned"], results["tuned"], custom=spec.custom_metrics, seed=spec.seed)
        on = headline if headline in versus[other] else "exact_match"
        if other == "base":
            record["comparisons"] = {"metric": on, **versus["base"][on]}
        power[other] = {"metric": on, **needed_examples(versus[other][on])}
        notes = [n for n in (size_note(versus[other][on], power[other]), other_changes(versus[other], on)) if n]
        verdicts.append(" ".join([verdict_line(versus[other][on], metric_label(on), "tuned", other), *notes]))
    if power:
        record["power"] = power
    prompts = [m for m in PROMPT_MODELS if m in versus]
    if len(prompts) > 1 or (prompts and prompts != ["base"]):
        on = headline if all(headline in versus[m] and headline in results[m] for m in prompts) else "exact_match"
        pick = min if definition(on).direction == "lower" else max
        best = pick(prompts, key=lambda m: results[m][on])
        line = "Fine-tuning vs the best prompt (" + best + "): " + verdict_line(versus[best][on], metric_label(on), "tuned", best)
        record["prompting_verdict"] = {"best_prompt": best, "metric": on, "text": line,
                                       **{k: versus[best][on][k] for k in ("delta", "ci_low", "ci_high", "p_value", "significant")}}
        verdicts.append(line)
    kind = "tuned vs " + ", ".join(sorted(versus)) if versus else "tuned"
    models = {m: results[m] for m in [*(m for m in rows_by_model if m != "tuned"), "tuned"] if m in results}
    record.update(kind=f"{spec.split}: {kind}", versus=versus, verdicts=verdicts, table=comparison_table(models, versus, headline),
                  n=int(results["tuned"].get("n", 0)))
    return record


def record_evaluation(workspace: Workspace, run_dir: Path, info: RunInfo, staged: Staged, spec: EvalSpec,
                      rows_by_model: dict[str, list[dict]]) -> dict[str, Any]:
    """Compare, keep the evaluation (one rename), register its rows under one evaluation id, rebuild the views."""
    results = {m: v["metrics"] for m, v in staged.models.items()}
    record = compare_models(spec, rows_by_model, results)
    for line in record["verdicts"]:
        console.print(f"[bold]{line}[/]" if line.startswith("Fine-tuning vs") else line)
    staged.commit(record)
    record = json.loads((evaluation_folder(run_dir, staged.id) / "evaluation.json").read_text(encoding="utf-8"))
    Registry(workspace.registry_db).add_evaluations(
        info.run_id, spec.split, staged.id, record["headline"]["metric"],
        [(m, int(v["metrics"].get("n", len(rows_by_model[m]))), v["metrics"]) for m, v in record["models"].items()])
    publish(run_dir, record)
    return record


def save_evaluation(workspace: Workspace, run_dir: Path, info: RunInfo, split: str, model_id: str, rows: list[dict], metrics: dict[str, float],
                    model_name: str | None = None) -> dict[str, Any]:
    """One model's evaluation on its own, kept and registered like any other (a classifier's, for one)."""
    staged = Staged(run_dir, split)
    try:
        staged.add(model_id, model_name or (info.base_model if model_id == "base" else info.run_id), rows, metrics)
        return record_evaluation(workspace, run_dir, info, staged, EvalSpec(split=split), {model_id: rows})  # type: ignore[arg-type]
    except BaseException:
        staged.discard()
        raise
