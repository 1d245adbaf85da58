"""Where evaluations are kept. Each `tunesmith eval` writes its answers and comparisons into a
staging folder and renames it to eval/evaluations/<id>/ only once complete, so a killed evaluation
leaves the earlier results as they were; nothing earlier is ever deleted. eval/report.json and the
flat eval/<split>-<model>.jsonl files are views of the kept evaluations: the latest one of a split
on top, every one listed under "evaluations" (newest first)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tunesmith.config import EvalSpec
from tunesmith.eval.metrics import definition, detect_task, headline_metric, metric_label
from tunesmith.registry.runfolder import RunInfo, write_json
from tunesmith.registry.store import Registry
from tunesmith.ui import console
from tunesmith.workspace import Workspace, process_alive

KEPT = "evaluations"
STAGING = ".staging-"
RECORD = "evaluation.json"
# report.json sections that hold the latest evaluation of each split, {section: {split: ...}}
PER_SPLIT = ("versus", "comparisons", "prompting_verdict", "headline", "verdicts", "table", "power", "evaluation_id")


def new_evaluation_id() -> str:
    return f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S-%f}-{secrets.token_hex(2)}"


class Staged:
    """One evaluation being written: answers per model in a staging folder, then `commit`."""

    def __init__(self, run_dir: Path, split: str):
        self.run_dir, self.split = run_dir, split
        self.id = new_evaluation_id()
        self.folder = run_dir / "eval" / f"{STAGING}{self.id}-{os.getpid()}"
        sweep_staging(run_dir)
        self.folder.mkdir(parents=True)
        self.models: dict[str, dict[str, Any]] = {}

    def add(self, model_id: str, name: str, rows: list[dict], metrics: dict[str, float]) -> None:
        (self.folder / f"{self.split}-{model_id}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        self.models[model_id] = {"model": name, "metrics": metrics}

    def commit(self, record: dict[str, Any]) -> Path:
        """Make the evaluation visible in one rename; until then the previous results are untouched."""
        record = {"id": self.id, "created": datetime.now(timezone.utc).isoformat(timespec="microseconds"), "split": self.split, "models": self.models, **record}
        write_json(self.folder / RECORD, record)
        final = self.run_dir / "eval" / KEPT / self.id
        final.parent.mkdir(exist_ok=True)
        os.rename(self.folder, final)
        return final

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def sweep_staging(run_dir: Path) -> None:
    """Remove the staging folders of evaluations whose process is gone (killed mid-way)."""
    for folder in (run_dir / "eval").glob(f"{STAGING}*"):
        pid = folder.name.rsplit("-", 1)[-1]
        if folder.is_dir() and pid.isdigit() and not process_alive(None, int(pid), None):
            shutil.rmtree(folder, ignore_errors=True)


def load_evaluations(run_dir: Path) -> list[dict[str, Any]]:
    """Every kept evaluation's record, newest first."""
    found = []
    for path in (run_dir / "eval" / KEPT).glob(f"*/{RECORD}"):
        try:
            found.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            console.print(f"[yellow]warning:[/] skipped the unreadable evaluation record {path} ({exc})")
    return sorted(found, key=lambda r: (r.get("created", ""), r.get("id", "")), reverse=True)


def evaluation_folder(run_dir: Path, evaluation_id: str) -> Path:
    return run_dir / "eval" / KEPT / evaluation_id


def publish(run_dir: Path, record: dict[str, Any]) -> None:
    """The flat answers of this (the latest) evaluation of its split, then report.json rebuilt."""
    folder, split = run_dir / "eval", record["split"]
    kept = evaluation_folder(run_dir, record["id"])
    for model_id in record["models"]:
        name = f"{split}-{model_id}.jsonl"
        tmp = folder / f".{name}.tmp"
        shutil.copyfile(kept / name, tmp)
        os.replace(tmp, folder / name)
    for stale in folder.glob(f"{split}-*.jsonl"):
        if stale.name[len(split) + 1 : -len(".jsonl")] not in record["models"]:
            stale.unlink()  # answers of a model this evaluation did not include: they stay in their own evaluation's folder
    rebuild_report(run_dir)


def rebuild_report(run_dir: Path) -> dict[str, Any]:
    """report.json from the kept evaluations; sections written by other commands (judge, human review,
    forgetting) and splits evaluated before evaluations were kept are left as they are."""
    path = run_dir / "eval" / "report.json"
    report = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    evaluations = load_evaluations(run_dir)
    latest: dict[str, dict[str, Any]] = {}
    for record in evaluations:
        latest.setdefault(record["split"], record)
    for split, record in latest.items():
        report[split] = record["models"]
        for section in PER_SPLIT:
            value = record["id"] if section == "evaluation_id" else record.get(section)
            if value is None:
                report.get(section, {}).pop(split, None)
            else:
                report.setdefault(section, {})[split] = value
    report["evaluations"] = evaluations
    write_json(path, report)
    return report


def latest_evaluation(run_dir: Path, split: str | None = None) -> dict[str, Any] | None:
    return next((r for r in load_evaluations(run_dir) if split is None or r["split"] == split), None)


def compare_models(spec: EvalSpec, rows_by_model: dict[str, list[dict]], results: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Tuned against every other model evaluated, on every metric; the verdicts on the task's headline
    metric; and the plain verdict against the best prompt. Returns the sections of the evaluation record."""
    from tunesmith.eval.compare import compare_rows, comparison_table, needed_examples, other_changes, size_note, verdict_line

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
        record["prompting_verdict"] = {
            "best_prompt": best,
            "metric": on,
            "text": line,
            **{k: versus[best][on][k] for k in ("delta", "ci_low", "ci_high", "p_value", "significant")},
        }
        verdicts.append(line)
    kind = "tuned vs " + ", ".join(sorted(versus)) if versus else "tuned"
    models = {m: results[m] for m in [*(m for m in rows_by_model if m != "tuned"), "tuned"] if m in results}
    record.update(
        kind=f"{spec.split}: {kind}", versus=versus, verdicts=verdicts, table=comparison_table(models, versus, headline), n=int(results["tuned"].get("n", 0))
    )
    return record


def record_evaluation(
    workspace: Workspace, run_dir: Path, info: RunInfo, staged: Staged, spec: EvalSpec, rows_by_model: dict[str, list[dict]]
) -> dict[str, Any]:
    """Compare, keep the evaluation (one rename), register its rows under one evaluation id, rebuild the views."""
    results = {m: v["metrics"] for m, v in staged.models.items()}
    record = compare_models(spec, rows_by_model, results)
    for line in record["verdicts"]:
        console.print(f"[bold]{line}[/]" if line.startswith("Fine-tuning vs") else line)
    staged.commit(record)
    record = json.loads((evaluation_folder(run_dir, staged.id) / "evaluation.json").read_text(encoding="utf-8"))
    Registry(workspace.registry_db).add_evaluations(
        info.run_id,
        spec.split,
        staged.id,
        record["headline"]["metric"],
        [(m, int(v["metrics"].get("n", len(rows_by_model[m]))), v["metrics"]) for m, v in record["models"].items()],
    )
    publish(run_dir, record)
    return record


def save_evaluation(
    workspace: Workspace, run_dir: Path, info: RunInfo, split: str, model_id: str, rows: list[dict], metrics: dict[str, float], model_name: str | None = None
) -> dict[str, Any]:
    """One model's evaluation on its own, kept and registered like any other (a classifier's, for one)."""
    staged = Staged(run_dir, split)
    try:
        staged.add(model_id, model_name or (info.base_model if model_id == "base" else info.run_id), rows, metrics)
        return record_evaluation(workspace, run_dir, info, staged, EvalSpec(split=split), {model_id: rows})  # type: ignore[arg-type]
    except BaseException:
        staged.discard()
        raise


def task_of(rows: list[dict]) -> str:
    """The task as docs/evaluation.md names it (json | fields | classification | text | preference), from the references."""
    if any("reward_accuracy" in r for r in rows):
        return "preference"
    labels = sorted({str(r["label"]) for r in rows if r.get("label") is not None}) or None
    return detect_task([r.get("reference") or "" for r in rows], labels)


PROMPT_MODELS = ("base", "few-shot", "system")  # the base model's weights, prompted three ways
