"""The datasets pages as JSON: each prepared dataset's manifest (split sizes, what each preparation step
removed, PII and duplicate counts, warnings, lineage), its token-length histogram and a sample of its
examples."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from tunesmith.registry.store import Registry
from tunesmith.workspace import Workspace

SAMPLE = 8
BINS = 20


def _manifest(folder: Path) -> dict[str, Any] | None:
    try:
        found = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def _step(manifest: dict[str, Any], name: str) -> dict[str, Any]:
    return next((s.get("report") or {} for s in manifest.get("steps", []) if isinstance(s, dict) and s.get("step") == name), {})


def summary(manifest: dict[str, Any]) -> dict[str, Any]:
    """The counts the table and the page show: splits, duplicates and personal data found."""
    pii = _step(manifest, "pii")
    dedup = _step(manifest, "dedup")
    return {
        "name": manifest.get("name"),
        "version": manifest.get("version"),
        "format": manifest.get("format"),
        "counts": manifest.get("counts", {}),
        "removed": manifest.get("removed", {}),
        "dedup": {"exact": dedup.get("exact", 0), "near": dedup.get("near", 0), "examples_in": dedup.get("examples_in")},
        "pii": {
            "mode": (manifest.get("settings") or {}).get("pii"),
            "counts": pii.get("counts", {}),
            "examples_affected": pii.get("examples_affected"),
            "dropped": pii.get("examples_dropped", 0),
        },
        "warnings": manifest.get("warnings", []),
        "skipped": len(manifest.get("skipped", [])),
        "parent_dataset": manifest.get("parent_dataset"),
        "source_kind": manifest.get("source", "file") if manifest.get("source") in ("file", "logs", "augment") else "file",
    }


def dataset_rows(workspace: Workspace, registry: Registry) -> list[dict[str, Any]]:
    rows = []
    with registry._connect() as db:
        listed = [dict(r) for r in db.execute("SELECT * FROM datasets ORDER BY created DESC")]
    runs = registry.runs()
    for row in listed:
        manifest = _manifest(Path(row["path"]))
        if manifest is None:
            continue
        used = [r["id"] for r in runs if r["dataset"] == row["name"]]
        rows.append({**summary(manifest), "created": row["created"], "runs": used})
    return rows


def dataset_detail(workspace: Workspace, registry: Registry, name: str, tokenizer_source: str | None) -> dict[str, Any] | None:
    row = registry.dataset(name)
    if row is None:
        return None
    folder = Path(row["path"])
    manifest = _manifest(folder)
    if manifest is None:
        return None
    sample = []
    for split in ("train", "validation", "test"):
        path = folder / f"{split}.jsonl"
        if path.is_file():
            with path.open(encoding="utf-8", errors="replace") as handle:
                for line, _ in zip(handle, range(SAMPLE if split == "train" else 2)):
                    try:
                        sample.append({"split": split, **json.loads(line)})
                    except ValueError:
                        continue
    histogram = None
    if tokenizer_source is not None:
        histogram = token_histogram(str(folder), manifest.get("version", ""), tokenizer_source)
    steps = [{k: s.get(k) for k in ("step", "examples_in", "examples_out")} for s in manifest.get("steps", []) if isinstance(s, dict)]
    return {
        **summary(manifest),
        "created": row["created"],
        "source": manifest.get("source"),
        "split_ratios": manifest.get("split_ratios"),
        "split_hashes": manifest.get("split_hashes"),
        "overlap": manifest.get("overlap"),
        "steps": steps,
        "skipped_lines": manifest.get("skipped", [])[:20],
        "traffic_window": manifest.get("traffic_window"),
        "sample": sample,
        "histogram": histogram,
        "runs": [r["id"] for r in registry.runs() if r["dataset"] == name],
    }


@lru_cache(maxsize=32)
def token_histogram(folder: str, version: str, tokenizer_source: str) -> dict[str, Any]:
    """Tokens per example (the trainer's own encoding, chat template included) per split, binned alike
    across splits. Cached by dataset version and tokenizer: a prepared version never changes."""
    from tunesmith.data.dataset import _examples
    from tunesmith.data.stats import dataset_stats
    from tunesmith.data.validate import load_tokenizer_only

    tokenizer = load_tokenizer_only(tokenizer_source)
    splits = {s: _examples(Path(folder) / f"{s}.jsonl") for s in ("train", "validation", "test") if (Path(folder) / f"{s}.jsonl").is_file()}
    lengths = dataset_stats(splits, tokenizer).token_lengths
    every = [n for values in lengths.values() for n in values]
    if not every:
        return {"tokenizer": Path(tokenizer_source).name, "edges": [], "counts": {}}
    low, high = min(every), max(every)
    width = max(1, -(-(high - low + 1) // BINS))
    edges = [low + i * width for i in range(BINS + 1) if low + i * width <= high + width]
    counts = {split: [0] * (len(edges) - 1) for split in lengths}
    for split, values in lengths.items():
        for n in values:
            counts[split][min(len(edges) - 2, (n - low) // width)] += 1
    return {"tokenizer": Path(tokenizer_source).name, "edges": edges, "counts": counts, "max": high, "mean": sum(every) / len(every)}
