"""`tunesmith eval`: the tuned model and whatever it is compared with (its base, prompting baselines,
other runs) on the same examples, prompts and decoding; every metric compared with a 95% interval."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tunesmith.config import EvalSpec, ModelSpec, RunSpec
from tunesmith.data.dataset import Dataset, load_dataset
from tunesmith.data.example import Example
from tunesmith.errors import UserError
from tunesmith.eval.generate import generate_batched
from tunesmith.eval.metrics import aggregate, compute_metrics, example_scores, resolve_metric_names, score_example
from tunesmith.models.loading import load_model
from tunesmith.registry.store import Registry
from tunesmith.runfolder import RunInfo, find_run, load_run_info, write_json
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
    """load → generate → score → compare → write eval/ and the registry. Returns metrics per model id."""
    info = load_run_info(run_dir)
    if info.task == "classification":
        from tunesmith.train.classify import evaluate_classifier_run

        return evaluate_classifier_run(workspace, run_dir, info, spec, compare_base)
    run_spec = load_run_spec_from_folder(run_dir)
    dataset = load_dataset(workspace, info.dataset)
    jobs = plan_jobs(workspace, run_dir, info, run_spec, dataset, spec, compare_base=compare_base, compare_runs=compare_runs or [],
                     baselines=baselines or [], forgetting=forgetting)
    forget_split(run_dir, spec.split)
    results, rows_by_model, probes = {}, {}, {}
    for job in jobs:
        model, tokenizer = job.load()
        for model_id, examples in job.variants.items():
            rows_by_model[model_id], results[model_id] = evaluate_model(model, tokenizer, examples, spec, model_id)
            save_evaluation(workspace, run_dir, info, spec.split, model_id, rows_by_model[model_id], results[model_id], job.names[model_id])
        if job.probe:
            from tunesmith.eval.forgetting import run_probe

            probes["base" if "tuned" not in job.variants else "tuned"] = run_probe(model, tokenizer)
        del model
    save_comparisons(run_dir, spec, rows_by_model, results)
    if probes:
        from tunesmith.eval.forgetting import save_forgetting

        save_forgetting(run_dir, probes, spec.forgetting_threshold)
    return results


def forget_split(run_dir: Path, split: str) -> None:
    """A new evaluation of a split replaces the last one: no model or comparison from an earlier call lingers beside it."""
    for stale in (run_dir / "eval").glob(f"{split}-*.jsonl"):
        stale.unlink()  # per-example answers of models this evaluation may not include
    path = run_dir / "eval" / "report.json"
    if not path.is_file():
        return
    report = json.loads(path.read_text(encoding="utf-8"))
    report.pop(split, None)
    for section in ("versus", "comparisons", "prompting_verdict", "judge"):
        report.get(section, {}).pop(split, None)
    write_json(path, report)


def save_comparisons(run_dir: Path, spec: EvalSpec, rows_by_model: dict[str, list[dict]], results: dict[str, dict[str, float]]) -> None:
    """Tuned against every other model evaluated: all metrics; and the plain verdict against the best prompt."""
    from tunesmith.eval.compare import compare_rows, verdict_line

    summary_path = run_dir / "eval" / "report.json"
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    versus: dict[str, Any] = {}
    summary.setdefault("versus", {})[spec.split] = versus
    for other in [m for m in rows_by_model if m != "tuned"]:
        versus[other] = compare_rows(rows_by_model[other], rows_by_model["tuned"], results["tuned"], custom=spec.custom_metrics, seed=spec.seed)
        if other == "base":
            legacy = versus["base"]["exact_match"]
            summary.setdefault("comparisons", {})[spec.split] = {"metric": "exact_match", **legacy}
        console.print(verdict_line(versus[other]["exact_match"], "exact match", "tuned", other))
    prompts = [m for m in PROMPT_MODELS if m in versus]
    if len(prompts) > 1 or (prompts and prompts != ["base"]):
        best = max(prompts, key=lambda m: results[m]["exact_match"])
        line = "Fine-tuning vs the best prompt (" + best + "): " + verdict_line(versus[best]["exact_match"], "exact match", "tuned", best)
        summary.setdefault("prompting_verdict", {})[spec.split] = {"best_prompt": best, "text": line, **{k: versus[best]["exact_match"][k] for k in ("delta", "ci_low", "ci_high", "p_value", "significant")}}
        console.print(f"[bold]{line}[/]")
    write_json(summary_path, summary)


def save_comparison(run_dir: Path, split: str, base_rows: list[dict], tuned_rows: list[dict]) -> dict:
    """Base vs tuned on every metric (kept for callers that evaluate the two themselves, e.g. quickstart)."""
    spec = EvalSpec(split=split)  # type: ignore[arg-type]
    tuned_metrics = json.loads((run_dir / "eval" / "report.json").read_text(encoding="utf-8"))[split]["tuned"]["metrics"]
    save_comparisons(run_dir, spec, {"base": base_rows, "tuned": tuned_rows}, {"tuned": tuned_metrics})
    return json.loads((run_dir / "eval" / "report.json").read_text(encoding="utf-8"))["comparisons"][split]


def save_evaluation(workspace: Workspace, run_dir: Path, info: RunInfo, split: str, model_id: str, rows: list[dict], metrics: dict[str, float],
                    model_name: str | None = None) -> None:
    folder = run_dir / "eval"
    folder.mkdir(exist_ok=True)
    (folder / f"{split}-{model_id}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    summary_path = folder / "report.json"
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.exists() else {}
    name = model_name or (info.base_model if model_id == "base" else info.run_id)
    summary.setdefault(split, {})[model_id] = {"model": name, "metrics": metrics}
    write_json(summary_path, summary)
    Registry(workspace.registry_db).add_evaluation(info.run_id, model_id, split, len(rows), metrics)
