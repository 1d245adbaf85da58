"""A prepared dataset: an immutable folder of split JSONL files plus a manifest, registered by name."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, PrivateAttr

from tunesmith.config import PrepareSpec
from tunesmith.data.example import Example
from tunesmith.data.formats import FormatName
from tunesmith.data.prepare import LengthLimit, Prepared, StepRecord, run_steps
from tunesmith.data.rows import Rows, content_hash
from tunesmith.data.rowsplit import check_overlap
from tunesmith.data.split import SPLITS, OverlapReport
from tunesmith.errors import UserError
from tunesmith.registry.store import Registry
from tunesmith.ui import console
from tunesmith.workspace import Workspace, safe_name, staging_dir, sweep_staging


class Origin(BaseModel):
    """Where a dataset version came from, beyond its file: what `tunesmith runs lineage` follows."""

    model_config = ConfigDict(extra="forbid")
    source_kind: Literal["file", "logs", "augment"] = "file"
    parent_dataset: str | None = None  # NAME@VERSION of the dataset this one continues
    traffic_window: dict[str, Any] | None = None  # logs: {"model", "run_id", "since", "until"} of the served traffic it was made from


class Manifest(BaseModel):
    name: str
    version: str
    format: str
    source: str  # the file it was prepared from (source_kind says what kind of source that file was)
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
    skipped: list[dict[str, Any]] = []  # lines --skip-invalid left out: file, line, code, message
    # Lineage (absent from manifests written before it: a file, no parent)
    source_kind: Literal["file", "logs", "augment"] = "file"
    parent_dataset: str | None = None
    traffic_window: dict[str, Any] | None = None


class Dataset(BaseModel):
    path: Path
    manifest: Manifest
    _splits: dict[str, list[Example]] | None = PrivateAttr(default=None)

    @property
    def splits(self) -> dict[str, list[Example]]:
        """The examples, read from the split files on first use: preparing or naming a large
        dataset does not load it."""
        if self._splits is None:
            self._splits = {split: _read_split(self.path / f"{split}.jsonl") for split in SPLITS}
        return self._splits

    def iter_split(self, split: str) -> Iterator[Example]:
        """One split's examples streamed from its file, for a pass over a dataset of any size."""
        if self._splits is not None:
            yield from self._splits[split]
            return
        yield from _examples(self.path / f"{split}.jsonl")

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def system_prompt(self) -> str | None:
        """The system message every training example shared, if they shared one: what a bare prompt is
        asked with (generate, chat), and what an exported model's serving config must send."""
        systems = {e.messages[0].content for e in self.iter_split("train") if e.messages and e.messages[0].role == "system"}
        return systems.pop() if len(systems) == 1 else None

    @property
    def version(self) -> str:
        return self.manifest.version


# File names that say nothing about the data: a dataset (and its runs) named `train` cannot be told apart.
GENERIC_STEMS = frozenset(
    {
        "train",
        "training",
        "data",
        "dataset",
        "test",
        "testing",
        "val",
        "valid",
        "validation",
        "dev",
        "input",
        "inputs",
        "examples",
        "export",
        "all",
        "sample",
        "samples",
        "file",
        "output",
        "raw",
        "clean",
        "final",
    }
)


def default_name(source: Path) -> str:
    """The file's name; for a generic one (train.csv, data.jsonl) prefixed with its folder's: support/train.csv -> support-train."""
    stem = source.stem
    if stem.lower() not in GENERIC_STEMS:
        return stem
    parent = source.resolve().parent.name
    if not parent or parent.lower() in GENERIC_STEMS:
        return stem
    try:
        return safe_name(f"{parent}-{stem}", "dataset name")
    except UserError:  # a folder name with spaces, say: keep the file's name
        return stem


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_atomically(target: Path, files: dict[str, Callable[[BinaryIO], None]]) -> None:
    """Write into a temporary sibling folder and rename it into place, so a crash leaves no half dataset."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_dir(target.parent, target.name)  # named by its owner: a killed write is swept by the next command
    try:
        for name, write in files.items():
            with (staging / name).open("wb") as handle:
                write(handle)
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
    length: LengthLimit | None = None,
    origin: Origin | None = None,
) -> Dataset:
    """read → clean → PII → dedup → split by seed → keep over-long examples in train → remove leaks → write → register.
    `origin`: where the file came from, when not simply a user's file (reviewed traffic, `data from-logs`)."""
    options = options or PrepareSpec()
    explicit_name = name is not None
    if name is None:
        name = default_name(source)
        if name != source.stem:
            console.print(f"  dataset name: {name} ('{source.stem}' alone would name every project's data alike; choose one with --out)")
    name = safe_name(name, "dataset name")
    registry = Registry(workspace.registry_db)  # a damaged registry stops us before anything is written
    console.print(f"preparing {source}")
    sweep_staging(workspace.datasets)
    # The spill file sits beside the datasets (same disk as the result), not in a small /tmp; its
    # name carries this process's id, so that if we are killed the next command removes it.
    workdir = staging_dir(workspace.datasets, "prepare")
    try:
        prepared = run_steps(source, fmt, seed, ratios, options, workdir, length)
        try:
            return _register(prepared, source, workspace, registry, name, explicit_name, seed, ratios, options, origin)
        finally:
            prepared.rows.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _register(
    prepared: Prepared,
    source: Path,
    workspace: Workspace,
    registry: Registry,
    name: str,
    explicit_name: bool,
    seed: int,
    ratios: tuple[float, float, float],
    options: PrepareSpec,
    origin: Origin | None = None,
) -> Dataset:
    rows, splits, extra = prepared.rows, prepared.splits, {"train": prepared.extra_train}
    origin = origin or Origin(source_kind="augment" if prepared.extra_train else "file")  # paraphrases joined the file's examples
    split_hashes = {s: content_hash(rows, splits[s], extra.get(s, [])) for s in SPLITS}
    version = hashlib.sha256(json.dumps([prepared.format, seed, list(ratios), split_hashes], sort_keys=True).encode()).hexdigest()[:12]
    manifest = Manifest(
        name=name,
        version=version,
        format=prepared.format,
        source=str(source),
        source_sha256=_sha256(source),
        seed=seed,
        split_ratios=ratios,
        counts={s: len(splits[s]) + len(extra.get(s, [])) for s in SPLITS},
        split_hashes=split_hashes,
        removed=prepared.removed,
        overlap=check_overlap(rows, splits, prepared.extra_train),
        settings=options.model_dump(mode="json"),
        steps=prepared.steps,
        warnings=prepared.warnings,
        skipped=prepared.skipped,
        **origin.model_dump(),
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
        files = {f"{s}.jsonl": _split_writer(rows, splits[s], extra.get(s, [])) for s in SPLITS}
        files["manifest.json"] = lambda handle: handle.write(manifest.model_dump_json(indent=2).encode())
        if prepared.review:
            files["augment_review.jsonl"] = lambda handle: handle.writelines((json.dumps(row, ensure_ascii=False) + "\n").encode() for row in prepared.review)
        _write_atomically(target, files)
    # Registered right after the folder is in place; should this fail or be killed, the folder is
    # the truth: preparing the file again or `tunesmith runs reindex` registers it.
    registry.add_dataset(name, version, target, prepared.format, manifest.counts, str(source), **origin.model_dump())
    return Dataset(path=target, manifest=manifest)


def _split_writer(rows: Rows, selected: np.ndarray, extra: list[Example]) -> Callable[[BinaryIO], None]:
    def write(handle: BinaryIO) -> None:
        handle.writelines(rows.lines(selected))
        handle.writelines((e.model_dump_json() + "\n").encode() for e in extra)

    return write


def _damaged_fix(folder: Path) -> str:
    return f"delete {folder} and prepare the dataset again from its source file (tunesmith data prepare FILE --out {folder.name})"


def _examples(path: Path) -> Iterator[Example]:
    """A split file's examples; a damaged line is named, not a traceback."""
    from pydantic import ValidationError

    try:
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    try:
                        yield Example.model_validate_json(line)
                    except ValidationError as exc:
                        raise UserError(
                            f"damaged line in a prepared dataset: {exc.errors()[0]['msg']}", where=f"{path}:{number}", fix=_damaged_fix(path.parent)
                        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}", fix=_damaged_fix(path.parent)) from None


def _read_split(path: Path) -> list[Example]:
    return list(_examples(path))


def read_manifest(folder: Path) -> Manifest:
    from tunesmith.files import read_model

    return read_model(folder / "manifest.json", Manifest, fix=_damaged_fix(folder))


def load_dataset(workspace: Workspace, name: str) -> Dataset:
    sweep_staging(workspace.datasets)
    folder = workspace.dataset_dir(name)
    if folder.is_dir() and not (folder / "manifest.json").is_file():
        raise UserError(f"dataset folder {folder} has no manifest.json (a damaged or half-copied dataset)", fix=_damaged_fix(folder))
    if not (folder / "manifest.json").is_file():
        raise UserError(f"no dataset named '{name}' in {workspace.datasets}", fix="run `tunesmith data prepare FILE --out NAME` first, or pass a file path")
    return Dataset(path=folder, manifest=read_manifest(folder))


def trained_system_prompt(workspace: Workspace, name: str) -> str | None:
    """The system message every training example of dataset `name` shared, so a bare prompt is asked
    the way the model learned (generate, chat and the server all add it); None if they had none or differed."""
    try:
        return load_dataset(workspace, name).system_prompt
    except UserError:  # the dataset was made in another TUNESMITH_HOME: ask without a system message
        return None
