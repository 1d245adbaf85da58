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

from tunesmith.runfolder import write_json
from tunesmith.ui import console

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
        record = {"id": self.id, "created": datetime.now(timezone.utc).isoformat(timespec="microseconds"), "split": self.split,
                  "models": self.models, **record}
        write_json(self.folder / RECORD, record)
        final = self.run_dir / "eval" / KEPT / self.id
        final.parent.mkdir(exist_ok=True)
        os.rename(self.folder, final)
        return final

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_staging(run_dir: Path) -> None:
    """Remove the staging folders of evaluations whose process is gone (killed mid-way)."""
    for folder in (run_dir / "eval").glob(f"{STAGING}*"):
        pid = folder.name.rsplit("-", 1)[-1]
        if folder.is_dir() and pid.isdigit() and not _alive(int(pid)):
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
