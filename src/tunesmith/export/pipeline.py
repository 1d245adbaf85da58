"""`tunesmith export`: check → write into a staging folder → verify there → export.json → rename into
place. A failed or interrupted export leaves nothing half-written at the destination; one that is
written whole but does not behave as trained is kept (export.json says how it failed) and raises
ExportMismatch (exit 1), showing the first differing example.

The destination (default runs/<run-id>/exports/<target>[-<quant>]/) must be absent or empty unless
`force`: then the old folder stays whole until the new one is complete, and is replaced."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.errors import ExportMismatch, UserError
from tunesmith.export.base import ExportOptions, Target, Written
from tunesmith.export.record import build_record, read_record, write_record
from tunesmith.export.source import Source, load_source
from tunesmith.export.targets import check_options, target_for
from tunesmith.workspace import Workspace, staging_dir, sweep_staging


@dataclass
class ExportResult:
    folder: Path
    target: str
    runtime: str
    record: dict[str, Any]  # export.json's contents
    verification: dict[str, Any]

    @property
    def total_bytes(self) -> int:
        return int(self.record["total_bytes"])

    @property
    def usage(self) -> str:
        return str(self.record["usage"])


def default_out(source: Source, to: str, quantize: str | None) -> Path:
    return source.folder / "exports" / (f"{to}-{quantize}" if quantize else to)


def _check_destination(out: Path, force: bool, source: Source) -> None:
    # --force removes the destination: never a folder that holds the run, the base model or the workspace
    kept = [source.folder, source.workspace.home, *([Path(source.info.base_model_path).resolve()] if Path(source.info.base_model_path).exists() else [])]
    inside_run = source.folder in out.parents and (source.folder / "exports") not in out.parents
    if any(out == k or out in k.parents for k in kept) or inside_run:
        raise UserError(
            f"{out} holds (or is part of) the run, its base model or the workspace: an export there could overwrite them",
            where="--out",
            fix=f"give a new folder elsewhere, or leave --out out (default: {source.folder / 'exports'}/<target>)",
        )
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file, not a folder", where="--out", fix="give a folder path (it is created)")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"{out} already holds files", where="--out", fix="give an empty or new folder, or add --force to replace it")


def _verify(source: Source, target: Target, folder: Path, written: Written, options: ExportOptions) -> dict[str, Any]:
    from tunesmith.export.verify import verify_answers

    return verify_answers(source, target, folder, written, options).record()


def _raise_if_failed(source: Source, folder: Path, verification: dict[str, Any], notes: list[str]) -> None:
    if verification.get("passed", False):
        return
    from tunesmith.export.verify import Verification

    found = Verification(**verification)
    raise ExportMismatch(
        f"the export does not behave as run {source.run_id} did in tunesmith: {'; '.join(found.failures)}"
        + "".join(f"\n{text}" for text in [found.first_difference_text()] if text)
        + "".join(f"\n  note: {note}" for note in notes),
        where=str(folder),
        fix="export.json holds the figures; a prompt-id or runaway failure means the template or stop tokens were lost (a bug to report), "
        "a few differing answers may be numerical (verify on the device the run was evaluated on)",
    )


def _move_into_place(staging: Path, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    os.replace(staging, out)


def export_run(
    run_ref: str | Path,
    workspace: Workspace,
    to: str,
    out: Path | None = None,
    quantize: str | None = None,
    verify: bool = True,
    *,
    runtime: str | None = None,
    verify_examples: int = 32,
    force: bool = False,
) -> ExportResult:
    target = target_for(to)
    source = load_source(workspace, run_ref)
    destination = (Path(out).expanduser() if out is not None else default_out(source, to, quantize)).resolve()
    options = ExportOptions(to=to, out=destination, quantize=quantize, runtime=runtime, verify=verify, verify_examples=verify_examples)
    check_options(target, options)
    target.check(source, options)
    _check_destination(destination, force, source)
    if verify:
        source.conversations(verify_examples)  # no dataset to verify on is bad input: said now, before minutes of writing

    destination.parent.mkdir(parents=True, exist_ok=True)
    sweep_staging(destination.parent)
    staging = staging_dir(destination.parent, destination.name)
    try:
        written = target.write(source, staging, options)
        verification = _verify(source, target, staging, written, options) if verify else {"skipped": True, "why": "--no-verify"}
        record = build_record(source, options, written, verification, staging)
        write_record(staging, record)
        _move_into_place(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if verify:
        _raise_if_failed(source, destination, verification, written.notes)
    return ExportResult(destination, to, written.runtime, record, verification)


def verify_export(folder: Path, workspace: Workspace, *, verify_examples: int | None = None) -> ExportResult:
    """Verify an export folder again (after copying it, or exported with --no-verify), as `export` does
    after writing: the figures replace export.json's; ExportMismatch (exit 1) when it fails."""
    folder = Path(folder).resolve()
    record = read_record(folder)
    target = target_for(record["format"])
    run = record["source_run"]
    source = load_source(workspace, run["folder"] if (Path(run["folder"]) / "run.json").is_file() else run["run_id"])
    written = Written(
        runtime=record["runtime"], usage=record["usage"], notes=record["notes"], details=record["details"], quantized=bool(record.get("quantized"))
    )
    examples = verify_examples or (record["verification"] or {}).get("examples") or 32
    options = ExportOptions(
        to=record["format"], out=folder, quantize=record.get("quantization"), runtime=record["runtime"] if target.runtimes else None, verify_examples=examples
    )
    record["verification"] = _verify(source, target, folder, written, options)
    write_record(folder, record)
    _raise_if_failed(source, folder, record["verification"], written.notes)
    return ExportResult(folder, record["format"], written.runtime, record, record["verification"])
