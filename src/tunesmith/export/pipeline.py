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
from tunesmith.export.base import ExportOptions
from tunesmith.export.record import build_record, write_record
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


def _check_destination(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file, not a folder", where="--out", fix="give a folder path (it is created)")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"{out} already holds files", where="--out", fix="give an empty or new folder, or add --force to replace it")


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
    _check_destination(destination, force)
    if verify:
        source.conversations(verify_examples)  # no dataset to verify on is bad input: said now, before minutes of writing

    destination.parent.mkdir(parents=True, exist_ok=True)
    sweep_staging(destination.parent)
    staging = staging_dir(destination.parent, destination.name)
    try:
        written = target.write(source, staging, options)
        if not verify:
            verification: dict[str, Any] = {"skipped": True, "why": "--no-verify"}
        elif target.verify is not None:
            verification = target.verify(source, staging, written, options).record()
        else:
            from tunesmith.export.verify import verify_answers

            verification = verify_answers(source, target, staging, written, options).record()
        record = build_record(source, options, written, verification, staging)
        write_record(staging, record)
        _move_into_place(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if verify and not verification.get("passed", False):
        from tunesmith.export.verify import Verification

        found = Verification(**verification)
        raise ExportMismatch(
            f"the export does not behave as run {source.run_id} did in tunesmith: {'; '.join(found.failures)}\n{found.first_difference_text()}",
            where=str(destination),
            fix="export.json holds the figures; a template or stop-token difference is a bug to report, "
            "a few differing answers may be numerical (try again on the device it was evaluated on)",
        )
    return ExportResult(destination, to, written.runtime, record, verification)
