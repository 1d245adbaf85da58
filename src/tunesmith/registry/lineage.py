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


def key_metric(registry: Registry, run_id: str, info: Any) -> dict[str, Any] | None:
    """{metric, value, split} of the tuned model's latest evaluation (test before validation), else the
    classifier's validation scores kept at training, else None."""
    rows = [r for r in registry.evaluations(run_id) if r["model_id"] == "tuned"]
    rows.sort(key=lambda r: {"test": 0, "validation": 1}.get(r["split"], 2))
    for row in rows:
        metrics = row["metrics"]
        names = ([row["headline"]] if row.get("headline") else []) + list(KEY_METRICS)
        for name in names:
            if isinstance(metrics.get(name), (int, float)):
                return {"metric": name, "value": metrics[name], "split": row["split"]}
    for name in KEY_METRICS:
        if info.best_metrics and isinstance(info.best_metrics.get(name), (int, float)):
            return {"metric": name, "value": info.best_metrics[name], "split": "validation"}
    return None


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
                "metric": key_metric(registry, info.run_id, info),
                "best_val_loss": info.best_val_loss,
            }
        )
        ref = info.parent_run
    return chain
