"""A prepared dataset: an immutable folder of split JSONL files plus a manifest, registered by name."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from tunesmith.data.example import Example, content_hash
from tunesmith.config import PrepareSpec
from tunesmith.data.formats import FormatName
from tunesmith.data.prepare import StepRecord, run_steps
from tunesmith.data.split import SPLITS, OverlapReport, check_overlap
from tunesmith.errors import UserError
from tunesmith.registry.store import Registry
from tunesmith.ui import console
from tunesmith.workspace import Workspace, safe_name


class Manifest(BaseModel):
    name: str
    version: str
    format: str
    source: str
    source_sha256: str
    seed: int
    split_ratios: tuple[float, float, float]
    counts: dict[str, int]
    split_hashes: dict[str, str]
    removed: dict[str, int]
    overlap: OverlapReport
    settings: dict[str, Any] = {}
    steps: list[StepRecord] = []
    warnings: list[str] = []


class Dataset(BaseModel):
    path: Path
    manifest: Manifest
    splits: dict[str, list[Example]]

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_atomically(target: Path, files: dict[str, str]) -> None:
    """Write into a temporary sibling folder and rename it into place, so a crash leaves no half dataset."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for name, text in files.items():
            (staging / name).write_text(text, encoding="utf-8")
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def prepare_dataset(
    source: Path,
    workspace: Workspace,
    *,
    name: str | None = None,
    fmt: FormatName | None = None,
    seed: int = 0,
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
    options: PrepareSpec | None = None,
) -> Dataset:
    """read → clean → PII → dedup → split by seed → remove leaks → write → register."""
    options = options or PrepareSpec()
    explicit_name = name is not None
    name = safe_name(name or source.stem, "dataset name")
    console.print(f"preparing {source}")
    prepared = run_steps(source, fmt, seed, ratios, options)
    splits = prepared.splits
    split_hashes = {s: content_hash(splits[s]) for s in SPLITS}
    version = hashlib.sha256(json.dumps([prepared.format, seed, list(ratios), split_hashes], sort_keys=True).encode()).hexdigest()[:12]
    manifest = Manifest(
        name=name, version=version, format=prepared.format, source=str(source), source_sha256=_sha256(source), seed=seed,
        split_ratios=ratios, counts={s: len(splits[s]) for s in SPLITS}, split_hashes=split_hashes,
        removed=prepared.removed, overlap=check_overlap(splits), settings=options.model_dump(mode="json"), steps=prepared.steps,
        warnings=prepared.warnings,
    )
    target = workspace.dataset_dir(name)
    existing = read_manifest(target) if (target / "manifest.json").exists() else None
    if existing is not None and existing.version != version and not explicit_name:
        # The file changed since it was last prepared: the new content gets its own name, the old stays.
        name = safe_name(f"{name}-{version}", "dataset name")
        manifest.name = name
        target = workspace.dataset_dir(name)
        existing = read_manifest(target) if (target / "manifest.json").exists() else None
    if existing is not None and existing.version != version:
        raise UserError(
            f"dataset '{name}' already exists with another version ({existing.version}); datasets are immutable",
            fix=f"give the new one another name with --out, e.g. --out {name}-v2",
        )
    if existing is None:
        files = {f"{s}.jsonl": "".join(e.model_dump_json() + "\n" for e in splits[s]) for s in SPLITS}
        files["manifest.json"] = manifest.model_dump_json(indent=2)
        if prepared.review:
            files["augment_review.jsonl"] = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in prepared.review)
        _write_atomically(target, files)
    Registry(workspace.registry_db).add_dataset(name, version, target, prepared.format, manifest.counts, str(source))
    return Dataset(path=target, manifest=manifest, splits=splits)


def read_manifest(folder: Path) -> Manifest:
    return Manifest.model_validate_json((folder / "manifest.json").read_text(encoding="utf-8"))


def load_dataset(workspace: Workspace, name: str) -> Dataset:
    folder = workspace.dataset_dir(name)
    if not (folder / "manifest.json").is_file():
        raise UserError(f"no dataset named '{name}' in {workspace.datasets}", fix="run `tunesmith data prepare FILE --out NAME` first, or pass a file path")
    splits = {}
    for split in SPLITS:
        lines = (folder / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
        splits[split] = [Example.model_validate_json(line) for line in lines if line.strip()]
    return Dataset(path=folder, manifest=read_manifest(folder), splits=splits)
