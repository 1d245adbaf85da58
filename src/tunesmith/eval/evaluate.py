"""`tunesmith eval`: the tuned model and whatever it is compared with (its base, prompting baselines,
other runs) on the same examples, prompts and decoding; every metric compared with a 95% interval."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.chat_template import end_of_turn_ids
from tunesmith.config import EvalSpec, RunSpec
from tunesmith.data.dataset import Dataset, load_dataset
from tunesmith.data.example import Example
from tunesmith.errors import UserError
from tunesmith.eval.metrics import aggregate, compute_metrics, example_scores, resolve_metric_names, score_example
from tunesmith.eval.results import Staged, record_evaluation
from tunesmith.eval.toolcalls import reference_text
from tunesmith.models.artefact import load_base, load_tuned
from tunesmith.models.generate import generate_batched
from tunesmith.registry.runfolder import RunInfo, find_run, load_run_info, read_config
from tunesmith.ui import console, progress
from tunesmith.workspace import Workspace


def evaluate_model(model: Any, tokenizer: Any, examples: list[Example], spec: EvalSpec, label: str) -> tuple[list[dict], dict[str, float]]:
    """generate → score each answer → the metrics (chosen by task or named in spec.metrics) → reference perplexity."""
    eot = end_of_turn_ids(tokenizer)
    with progress() as bar:
        task = bar.add_task(f"evaluating {label}", total=len(examples), info="")
        outputs, seconds = generate_batched(
            model,
            tokenizer,
            examples,
            eot,
            max_new_tokens=spec.max_new_tokens,
            batch_size=spec.batch_size,
            on_batch=lambda n: bar.update(task, advance=n),
            temperature=spec.temperature,
            top_p=spec.top_p,
            seed=spec.seed,
        )
    # A final turn that calls tools is referred to as the tool template writes its calls (eval/toolcalls.py).
    references = [reference_text(e) or "" for e in examples]
    tools = [e.tools_json() for e in examples] if any(e.tools for e in examples) else None
    names = resolve_metric_names(spec.metrics, references)
    per_example = example_scores(outputs, references, names, tools=tools)
    rows = []
    for example, output, reference, extra in zip(examples, outputs, references, per_example):
        prompt = example.prompt_messages[-1].content if example.prompt_messages else ""
        rows.append(
            {
                "id": example.id,
                "prompt": prompt,
                "reference": reference,
                "prediction": output,
                **extra,
                **score_example(output, reference, example.label),
            }
        )
    metrics = aggregate(rows, seconds)
    corpus = compute_metrics(outputs, references, names, custom=spec.custom_metrics, tools=tools)
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


def plan_jobs(
    workspace: Workspace,
    run_dir: Path,
    info: RunInfo,
    run_spec: RunSpec,
    dataset: Dataset,
    spec: EvalSpec,
    *,
    compare_base: bool,
    compare_runs: list[str],
    baselines: list[str],
    forgetting: bool,
) -> list[Job]:
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
        names = {"base": info.base_model, "few-shot": f"{info.base_model} + {spec.shots} shots", "system": f"{info.base_model} + system prompt"}
        jobs.append(Job(lambda: load_base(info, run_spec.model), base_variants, names, probe=forgetting))
    jobs.append(Job(lambda: load_tuned(run_dir, info, run_spec.model), {"tuned": examples}, {"tuned": info.run_id}, probe=forgetting))
    for ref in compare_runs:
        other_dir = find_run(workspace, ref)
        other, other_spec = load_run_info(other_dir), read_config(other_dir)
        if other.run_id == info.run_id:
            raise UserError(f"--compare {ref} is this run itself", fix="compare with another run id (`tunesmith runs list`)")
        if other.dataset_version != info.dataset_version:
            console.print(
                f"[yellow]note:[/] {other.run_id} was trained on dataset version {other.dataset_version}, this run on "
                f"{info.dataset_version}; both are scored on this run's {spec.split} examples"
            )
        jobs.append(Job(lambda d=other_dir, o=other, s=other_spec: load_tuned(d, o, s.model), {other.run_id: examples}, {other.run_id: other.run_id}))
    return jobs


def evaluate_run(
    workspace: Workspace,
    run_dir: Path,
    spec: EvalSpec,
    compare_base: bool = False,
    *,
    compare_runs: list[str] | None = None,
    baselines: list[str] | None = None,
    forgetting: bool = False,
) -> dict[str, dict[str, float]]:
    """load → generate → score → compare → keep the evaluation (eval/evaluations/<id>/, report.json) and register it.
    Returns metrics per model id. Nothing earlier is touched until the whole evaluation is written."""
    info = load_run_info(run_dir)
    if info.task == "classification":
        from tunesmith.eval.classification import evaluate_classifier_run

        return evaluate_classifier_run(workspace, run_dir, info, spec, compare_base)
    run_spec = read_config(run_dir)
    dataset = load_dataset(workspace, info.dataset)
    jobs = plan_jobs(
        workspace,
        run_dir,
        info,
        run_spec,
        dataset,
        spec,
        compare_base=compare_base,
        compare_runs=compare_runs or [],
        baselines=baselines or [],
        forgetting=forgetting,
    )
    staged = Staged(run_dir, spec.split)
    results, rows_by_model, names, probes = {}, {}, {}, {}
    pairs = _held_out_pairs(run_dir, run_spec, spec) if info.task == "preference" else None
    try:
        for job in jobs:
            model, tokenizer = job.load()
            for model_id, examples in job.variants.items():
                rows_by_model[model_id], results[model_id] = evaluate_model(model, tokenizer, examples, spec, model_id)
                if pairs is not None:
                    pairs.add(model_id, model, tokenizer, examples, rows_by_model[model_id], results[model_id])
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


def _held_out_pairs(run_dir: Path, run_spec: RunSpec, spec: EvalSpec) -> Any:
    """A preference run's reward accuracy on the held-out pairs, beside the generated answers' metrics."""
    from tunesmith.eval.preference import HeldOutPairs

    train = run_spec.train
    return HeldOutPairs(run_dir, spec.split, train.max_seq_len, train.preference.strength, spec.batch_size)


def _test_kill(point: str, step: int) -> None:
    """Test hook, like training's: TUNESMITH_TEST_KILL_AT=eval:1 SIGKILLs the process once the first
    model's answers are staged (as a power cut would). Inert unless set."""
    if os.environ.get("TUNESMITH_TEST_KILL_AT") == f"{point}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)
