"""The runs-and-jobs table and one run's (or job's) page, as JSON: the registry and the run folders are
the truth for runs, api.db for jobs; a job that trained a run is one row with both."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunesmith.api.jobs import present, present_checkpoint, present_event
from tunesmith.api.store import ApiStore
from tunesmith.registry.runfolder import run_status
from tunesmith.registry.store import Registry
from tunesmith.workspace import Workspace

MAX_EVENTS = 500


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl as written so far (a line being written while we read is left for the next poll)."""
    path = run_dir / "metrics.jsonl"
    records = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


def price_of(run_dir: Path, job: dict[str, Any] | None) -> float | None:
    """The hourly price the run was costed at: the job's budget, or the run config's train.price_per_hour."""
    if job and job.get("budget") and job["budget"].get("price_per_hour"):
        return float(job["budget"]["price_per_hour"])
    estimate = _read_json(run_dir / "estimate.json") or {}
    return estimate.get("price_per_hour")


def headline(registry: Registry, run_id: str) -> dict[str, Any] | None:
    """The latest evaluation's headline metric, tuned and base: the "key metric" of the table."""
    rows = registry.evaluations(run_id)
    if not rows:
        return None
    latest = max(rows, key=lambda r: r["created"])
    same = [r for r in rows if r["evaluation_id"] == latest["evaluation_id"] and r["split"] == latest["split"]]
    name = latest.get("headline") or next((m for m in ("exact_match", "accuracy", "rougeL") if m in latest["metrics"]), None)
    if name is None:
        return None
    values = {r["model_id"]: r["metrics"].get(name) for r in same}
    return {"metric": name, "split": latest["split"], "tuned": values.get("tuned"), "base": values.get("base")}


def run_rows(workspace: Workspace, store: ApiStore, registry: Registry) -> list[dict[str, Any]]:
    jobs, _ = store.list_jobs(None, None, 10_000)
    by_run = {j["run_id"]: j for j in jobs if j["run_id"]}
    rows = []
    for run in registry.runs():
        folder = Path(run["path"])
        status, why = run_status(folder, run["status"], run["owner"])
        info = _read_json(folder / "run.json") or {}
        job = by_run.pop(run["id"], None)
        seconds = info.get("train_seconds")
        price = price_of(folder, job)
        rows.append(
            {
                "id": run["id"],
                "run_id": run["id"],
                "job_id": job["id"] if job else None,
                "name": run["name"],
                "status": job["status"] if job else status,
                "why": why,
                "base_model": Path(run["base_model"]).name if "/" in run["base_model"] else run["base_model"],
                "method": run["method"],
                "dataset": run["dataset"],
                "dataset_version": run["dataset_version"],
                "best_val_loss": run["best_val_loss"],
                "headline": headline(registry, run["id"]),
                "seconds": seconds,
                "cost": round(seconds / 3600 * price, 4) if seconds is not None and price else None,
                "created": run["created"],
                "study": info.get("study"),
                "parent_run": info.get("parent_run"),
            }
        )
    for job in jobs:  # jobs that have no run yet (waiting, or refused at validating_files)
        if job["run_id"] in by_run or job["run_id"] is None:
            rows.append(
                {
                    "id": job["id"],
                    "run_id": None,
                    "job_id": job["id"],
                    "name": job["suffix"],
                    "status": job["status"],
                    "why": (job["error"] or {}).get("message"),
                    "base_model": job["model"],
                    "method": "lora",
                    "dataset": job["training_file"],
                    "dataset_version": None,
                    "best_val_loss": None,
                    "headline": None,
                    "seconds": None,
                    "cost": None,
                    "created": _iso(job["created_at"]),
                    "study": None,
                    "parent_run": None,
                }
            )
    rows.sort(key=lambda r: r["created"] or "", reverse=True)
    return rows


def _iso(unix: int | float | None) -> str | None:
    from datetime import datetime, timezone

    return None if unix is None else datetime.fromtimestamp(unix, timezone.utc).isoformat(timespec="seconds")


def find_job(store: ApiStore, ref: str) -> dict[str, Any] | None:
    """The job with this id, or the job that trained the run with this id."""
    job = store.job(ref)
    if job is not None:
        return job
    with store.connect() as db:
        row = db.execute("SELECT id FROM jobs WHERE run_id = ?", (ref,)).fetchone()
    return store.job(row["id"]) if row else None


def folder_checkpoints(folder: Path, val_loss: dict[int, float]) -> list[dict[str, Any]]:
    """The checkpoints kept in a run folder (checkpoints/step-N), newest first, with the validation loss at that step."""
    steps = sorted((int(p.name[5:]) for p in (folder / "checkpoints").glob("step-*") if p.name[5:].isdigit()), reverse=True)
    return [{"step_number": step, "fine_tuned_model_checkpoint": None, "metrics": {"valid_loss": val_loss.get(step)}} for step in steps]


def run_detail(workspace: Workspace, store: ApiStore, registry: Registry, ref: str) -> dict[str, Any] | None:
    """Everything the run page shows: live status, events, loss curves, checkpoints, estimate vs actual, config."""
    job = find_job(store, ref)
    run_id = job["run_id"] if job else ref
    run = registry.run(run_id) if run_id else None
    if run is None and job is None:
        return None
    detail: dict[str, Any] = {"id": ref, "job": present(job) if job else None, "run_id": run_id if run else None}
    if job:
        events, _ = store.list_events(job["id"], None, MAX_EVENTS)
        checkpoints, _ = store.list_checkpoints(job["id"], None, 1000)
        detail["events"] = [present_event(e) for e in reversed(events)]
        detail["checkpoints"] = [present_checkpoint(c) for c in checkpoints]
        detail["status"] = job["status"]
    if run is None:
        detail.setdefault("events", [])
        return {**detail, "curves": {"train": [], "validation": []}, "estimate": None, "actual": None, "config": None, "info": None}
    folder = Path(run["path"])
    status, why = run_status(folder, run["status"], run["owner"])
    detail.setdefault("status", status)
    detail["why"] = why
    info = _read_json(folder / "run.json")
    records = read_records(folder)
    train = [[r["step"], r["loss"]] for r in records if "loss" in r and "step" in r]
    validation = [[r["step"], r["val_loss"]] for r in records if r.get("val_loss") is not None and "step" in r]
    if not job:  # a run trained outside the service: its own events and checkpoint folders
        detail["events"] = [
            {"created_at": None, "level": "info", "message": f"{r['event']}: {r.get('reason') or r.get('message') or ''}".strip(": ")}
            for r in records
            if "event" in r
        ]
        detail["checkpoints"] = folder_checkpoints(folder, dict((step, loss) for step, loss in validation))
    estimate = _read_json(folder / "estimate.json")
    price = price_of(folder, job)
    if isinstance(estimate, dict) and estimate.get("cost") is None and price and estimate.get("total_seconds") is not None:
        estimate["cost"] = round(estimate["total_seconds"] / 3600 * price, 4)  # a job's price is its budget's, not the run config's
    seconds = (info or {}).get("train_seconds") or (records and max((r.get("elapsed_s") or 0) for r in records)) or None
    peak = max((r.get("peak_mem_mb") or 0 for r in records), default=0)
    detail.update(
        {
            "info": info,
            "registry": run,
            "curves": {"train": train, "validation": validation},
            "estimate": estimate,
            "actual": {
                "steps": train[-1][0] if train else 0,
                "seconds": seconds,
                "peak_memory_bytes": int(peak * 2**20) if peak else None,
                "cost": round(seconds / 3600 * price, 4) if seconds and price else None,
                "tokens": sum(r.get("tokens") or 0 for r in records if "loss" in r),
            },
            "config": (folder / "config.yaml").read_text(encoding="utf-8", errors="replace") if (folder / "config.yaml").is_file() else None,
            "evaluated": bool(registry.evaluations(run_id)),
        }
    )
    return detail
