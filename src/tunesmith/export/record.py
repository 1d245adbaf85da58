"""export.json: what was exported, from which run and data, the files with their sizes, how to use it,
and the verification's figures. Written last into the staging folder, so an export folder that has
one is complete."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tunesmith._version import __version__
from tunesmith.export.base import ExportOptions, Written
from tunesmith.export.source import Source

RECORD = "export.json"


def file_sizes(folder: Path) -> list[dict[str, Any]]:
    """Every file under `folder` (relative path, bytes), export.json aside."""
    return [
        {"path": p.relative_to(folder).as_posix(), "bytes": p.stat().st_size}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.relative_to(folder).as_posix() != RECORD
    ]


def build_record(source: Source, options: ExportOptions, written: Written, verification: dict[str, Any], folder: Path) -> dict[str, Any]:
    files = file_sizes(folder)
    return {
        "format": options.to,
        "runtime": written.runtime,
        "quantization": options.quantize,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tunesmith_version": __version__,
        "source_run": {
            "run_id": source.run_id,
            "folder": str(source.folder),
            "method": source.info.method,
            "task": source.info.task,
            "base_model": source.info.base_model,
            "base_model_path": source.info.base_model_path,
        },
        "dataset": source.dataset_record,
        "end_of_turn_ids": source.info.end_of_turn_ids,
        "system_prompt": source.system_prompt,
        "usage": written.usage,
        "notes": written.notes,
        "quantized": written.quantized,
        "details": written.details,
        "files": files,
        "total_bytes": sum(f["bytes"] for f in files),
        "verification": verification,
    }


def write_record(folder: Path, record: dict[str, Any]) -> Path:
    from tunesmith.registry.runfolder import write_json

    write_json(folder / RECORD, record)
    return folder / RECORD


def read_record(folder: Path) -> dict[str, Any]:
    from tunesmith.errors import UserError
    from tunesmith.files import read_json

    path = folder / RECORD
    if not path.is_file():
        raise UserError(f"{folder} has no {RECORD}: not a tunesmith export (or one cut short)", fix="export the run again with `tunesmith export RUN --to ...`")
    record = read_json(path, fix="export the run again")
    if not isinstance(record, dict) or not {"format", "runtime", "source_run", "details"} <= set(record):
        raise UserError(f"{path} is damaged: not an export record", fix="export the run again")
    return record
