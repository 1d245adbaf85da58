"""A run's lineage: the run, the run it continued (`train --from`), that run's parent, and so on, each
with the dataset version it was trained on (and where that came from: a file, reviewed production
traffic, augmentation) and its key metric. The folders are the truth: run.json names the parent run,
the run's dataset.json is the manifest it was trained on; the registry gives the latest evaluation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunesmith.errors import UserError
from tunesmith.registry.runfolder import find_run, load_run_info
from tunesmith.registry.store import Registry
from tunesmith.workspace import Workspace

# The metric a step is summed up by, in order of preference (eval's headline metrics first).
KEY_METRICS = ("label_macro_f1", "f1", "exact_match", "valid_json", "accuracy", "rougeL", "bleu")


def _manifest(run_dir: Path, workspace: Workspace, name: str) -> dict[str, Any]:
    for path in (run_dir / "dataset.json", workspace.dataset_dir(name) / "manifest.json"):
        try:
            found = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(found, dict):
            return found
    return {}


def scores(registry: Registry, run_id: str, info: Any) -> tuple[dict[str, Any], str | None, list[str]] | None:
    """(the tuned model's metrics, their split, metric names in order of preference) from its latest
    evaluation (test before validation), else the classifier's validation scores kept at training."""
    rows = [r for r in registry.evaluations(run_id) if r["model_id"] == "tuned"]
    rows.sort(key=lambda r: {"test": 0, "validation": 1}.get(r["split"], 2))
    for row in rows:
        return row["metrics"], row["split"], ([row["headline"]] if row.get("headline") else []) + list(KEY_METRICS)
    if info.best_metrics:
        return info.best_metrics, "validation", list(KEY_METRICS)
    return None


def _pick(found: tuple[dict[str, Any], str | None, list[str]] | None, names: list[str]) -> dict[str, Any] | None:
    if found is None:
        return None
    metrics, split, _ = found
    name = next((n for n in names if isinstance(metrics.get(n), (int, float))), None)
    return None if name is None else {"metric": name, "value": metrics[name], "split": split}


def key_metrics(found: list[tuple[dict[str, Any], str | None, list[str]] | None]) -> list[dict[str, Any] | None]:
    """One metric for every step when they share one (the oldest step's headline first), so the chain
    reads as a trend; otherwise each step's own headline."""
    evaluated = [f for f in found if f is not None]
    order = list(dict.fromkeys(name for f in reversed(evaluated) for name in f[2]))
    shared = next((n for n in order if all(isinstance(f[0].get(n), (int, float)) for f in evaluated)), None)
    return [_pick(f, [shared] if shared else f[2]) if f is not None else None for f in found]


def run_lineage(workspace: Workspace, run_ref: str) -> list[dict[str, Any]]:
    """The chain, the run asked for first, then its parent run, and so on back to a run trained from a base."""
    registry = Registry(workspace.registry_db)
    chain: list[dict[str, Any]] = []
    seen: set[str] = set()
    ref: str | None = run_ref
    while ref is not None:
        try:
            run_dir = find_run(workspace, ref)
        except UserError:
            if not chain:
                raise
            chain.append({"run_id": ref, "missing": True})  # the parent's folder is gone: the chain ends here, said so
            break
        info = load_run_info(run_dir)
        if info.run_id in seen:  # a copied folder naming itself as parent: stop, never loop
            break
        seen.add(info.run_id)
        manifest = _manifest(run_dir, workspace, info.dataset)
        chain.append(
            {
                "run_id": info.run_id,
                "status": info.status,
                "method": info.method,
                "base_model": info.base_model,
                "parent_run": info.parent_run,
                "dataset": {
                    "name": info.dataset,
                    "version": info.dataset_version,
                    "source_kind": manifest.get("source_kind", "file"),
                    "parent_dataset": manifest.get("parent_dataset"),
                    "traffic_window": manifest.get("traffic_window"),
                    "train_examples": (manifest.get("counts") or {}).get("train"),
                },
                "metric": scores(registry, info.run_id, info),
                "best_val_loss": info.best_val_loss,
            }
        )
        ref = info.parent_run
    steps = [step for step in chain if not step.get("missing")]
    for step, metric in zip(steps, key_metrics([step["metric"] for step in steps]), strict=True):
        step["metric"] = metric
    return chain
