"""Served traffic back into training: `tunesmith data from-logs`.

Export: the logged requests of one model in a window (all, those behind an alert, or the answers the
model was least sure of) become a review sheet in the human-review format of eval/review.py
(review.csv and review.html): answer 1 is the answer as served, answer 2 a copy the reviewer may
rewrite. Beside the sheet, from-logs.json (kept by whoever runs the review) holds each request as
logged (already scrubbed of PII unless the server ran with --log full), the window and the dataset
the model was trained on.

Import: each reviewed row becomes a training example (preferred 1 or tie: the served answer was
right; 2: the reviewer's answer; empty: not reviewed, left out), prepared as a new dataset version
whose manifest names its parent dataset and the traffic window (`source_kind: logs`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tunesmith.errors import ProblemList, UserError
from tunesmith.monitor.alerts import read_alerts
from tunesmith.serve.traffic import TrafficRecord, read_traffic
from tunesmith.workspace import Workspace, safe_name

Only = Literal["all", "alerted", "low-confidence"]
ONLY = ("all", "alerted", "low-confidence")
KEY_FILE = "from-logs.json"
REVIEW_FOLDER = "reviews"
TITLE = "Served answers to review"
INTRO = (
    "Each example is a request the model answered in production. Answer 1 is what it said; answer 2 starts as a copy: "
    "rewrite it where the answer should have been different. Pick 1 when the served answer is right as it is, 2 to use "
    "your answer instead, and leave 'Better' empty to leave the example out. When done, press the button and send the file back."
)


@dataclass
class SheetExport:
    csv: Path
    html: Path
    key: Path
    rows: int
    window: dict[str, Any]


def review_folder(workspace: Workspace, name: str) -> Path:
    return workspace.home / REVIEW_FOLDER / "from-logs" / safe_name(name, "--out")


def alerted_ids(home: Path, model: str, since: float | None) -> set[str]:
    """The request ids that `tunesmith monitor` alerts name as evidence."""
    return {str(i) for alert in read_alerts(home, model=model, since=since) for i in alert.get("request_ids") or ()}


# ---------------------------------------------------------------- export


def _trained_on(workspace: Workspace, run_id: str | None) -> tuple[str | None, str | None]:
    """(run id, NAME@VERSION of the dataset it was trained on) when the model is a run of this workspace."""
    from tunesmith.registry.runfolder import find_run, load_run_info

    if run_id is None:
        return None, None
    try:
        info = load_run_info(find_run(workspace, run_id))
    except UserError:
        return run_id, None
    return info.run_id, f"{info.dataset}@{info.dataset_version}"


def prompt_text(record: TrafficRecord) -> str:
    """The request as a reviewer reads it: each message on its own lines, with its role."""
    if record.messages is None:
        return record.prompt or ""
    parts = []
    for message in record.messages:
        content = message.get("content")
        if not isinstance(content, str):  # content parts: their text
            content = " ".join(str(p.get("text", "")) for p in content or () if isinstance(p, dict))
        parts.append(f"[{message.get('role', '?')}] {content}")
    return "\n\n".join(parts)


def export_sheet(
    workspace: Workspace,
    model: str,
    out: str,
    *,
    only: str = "all",
    since: float | None = None,
    until: float | None = None,
    below: float = 0.5,
    limit: int | None = None,
) -> SheetExport:
    """Logged requests of `model` (name or run id) answered without error in [since, until) → review sheet.
    only: all | alerted (the requests monitor's alerts name as evidence) | low-confidence (mean token
    probability under `below`). `limit`: the most recent N after filtering."""
    from tunesmith.eval.review import COLUMNS, render_html, write_sheet

    if only not in ONLY:
        raise UserError(f"unknown --only '{only}'", where="--only", fix=f"use one of: {', '.join(ONLY)}")
    home = workspace.home
    until = time.time() if until is None else until
    records = [r for r in read_traffic(home, model=model, since=since, until=until) if r.status == 200 and r.answer is not None]
    logged = len(records)
    if only == "alerted":
        wanted = alerted_ids(home, model, since)
        records = [r for r in records if r.id in wanted]
    elif only == "low-confidence":
        records = [r for r in records if r.confidence is not None and r.confidence < below]
    if limit is not None:
        records = records[-limit:]
    if not records:
        window = f"since {time.strftime('%Y-%m-%d %H:%M', time.gmtime(since))} UTC" if since else "in the whole log"
        why = f"{logged} answered request(s) logged {window}, none of them {only}" if logged else f"no answered request logged for '{model}' {window}"
        raise UserError(
            f"nothing to review: {why}",
            fix="check the model name (the name clients asked for, or its run id), widen --since, or choose --only all; "
            "the server logs only with --log redacted or full",
        )
    run_id, parent = _trained_on(workspace, next((r.run_id for r in records if r.run_id), None))
    window = {"model": model, "run_id": run_id, "since": since if since is not None else records[0].time, "until": until}
    folder = review_folder(workspace, out)
    folder.mkdir(parents=True, exist_ok=True)
    sheet = [
        {"id": r.id, "prompt": prompt_text(r), "reference": "", "answer_1": r.answer or "", "answer_2": r.answer or ""} | dict.fromkeys(COLUMNS[5:], "")
        for r in records
    ]
    csv_path, html_path, key_path = folder / "review.csv", folder / "review.html", folder / KEY_FILE
    write_sheet(csv_path, sheet)
    html_path.write_text(render_html(sheet, title=TITLE, intro=INTRO, editable_answer_2=True), encoding="utf-8")
    key = {
        "about": "requests of a review sheet made by `tunesmith data from-logs`: what `--import` turns into a dataset version",
        "out": out,
        "only": only,
        "parent_dataset": parent,
        "traffic_window": window,
        "records": {r.id: r.model_dump(mode="json", include={"endpoint", "messages", "prompt", "tools", "answer", "tool_calls", "log_mode"}) for r in records},
    }
    key_path.write_text(json.dumps(key, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return SheetExport(csv_path, html_path, key_path, len(sheet), window)


# ---------------------------------------------------------------- import


def _example(logged: dict[str, Any], answer: str) -> dict[str, Any]:
    """A chat example: the conversation as logged, then the reviewed answer."""
    messages = logged.get("messages") or [{"role": "user", "content": logged.get("prompt") or ""}]
    example: dict[str, Any] = {"messages": [*messages, {"role": "assistant", "content": answer}]}
    if logged.get("tools"):
        example["tools"] = logged["tools"]
    return example


def reviewed_examples(sheet: Path, key: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
    """(examples, rows left out as not reviewed); every problem in the sheet at once, with its line."""
    records = key.get("records") or {}
    examples, skipped, problems, seen = [], 0, [], set()
    for line, row in read_rows(sheet):
        where = f"{sheet}:{line}"
        row_id = (row.get("id") or "").strip()
        if row_id not in records:
            problems.append(f"{where}: unknown id {row_id!r} (not in {KEY_FILE})")
            continue
        if row_id in seen:
            problems.append(f"{where}: id {row_id!r} appears twice")
            continue
        seen.add(row_id)
        preferred = (row.get("preferred") or "").strip().lower()
        if preferred == "":
            skipped += 1
            continue
        if preferred not in ("1", "2", "tie"):
            problems.append(f"{where}: preferred is {preferred!r}; use 1 (served answer), 2 (your answer), tie, or leave it empty")
            continue
        answer = (row.get("answer_2") if preferred == "2" else row.get("answer_1")) or ""
        if not answer.strip():
            problems.append(f"{where}: answer_{'2' if preferred == '2' else '1'} is empty; write the answer the model should give")
            continue
        examples.append(_example(records[row_id], answer.strip()))
    if problems:
        raise ProblemList(f"{len(problems)} problem(s) in the review sheet {sheet}", problems, fix="keep the exported ids; preferred is 1, 2, tie or empty")
    return examples, skipped


def read_rows(sheet: Path) -> list[tuple[int, dict[str, str]]]:
    from tunesmith.eval.review import read_cells

    return read_cells(sheet, needed=("id", "answer_1", "answer_2", "preferred"))


def load_key(path: Path) -> dict[str, Any]:
    try:
        key = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path.name}: {exc}", where=str(path), fix=f"pass the {KEY_FILE} written beside the exported sheet (--key)") from None
    if not isinstance(key, dict) or not isinstance(key.get("records"), dict):
        raise UserError(f"{path} is not a from-logs key (no 'records')", where=str(path), fix=f"pass the {KEY_FILE} written by `tunesmith data from-logs`")
    return key


def import_sheet(
    workspace: Workspace, sheet: Path, *, out: str | None = None, key_path: Path | None = None, ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
) -> Any:
    """A filled sheet → a new dataset version (data prepare's checks, scrub and split), its manifest
    naming the parent dataset and the traffic window. Returns the Dataset."""
    from tunesmith.config import PrepareSpec
    from tunesmith.data.dataset import Origin, prepare_dataset

    sheet = Path(sheet)
    key_path = Path(key_path) if key_path is not None else sheet.parent / KEY_FILE
    if not key_path.is_file():
        raise UserError(f"no {KEY_FILE} beside {sheet}", fix=f"pass the key written with the sheet: --key PATH/{KEY_FILE}")
    key = load_key(key_path)
    examples, skipped = reviewed_examples(sheet, key)
    if not examples:
        raise UserError(f"no reviewed row in {sheet} ({skipped} left empty)", fix="fill 'preferred' (1, 2 or tie) for the rows to keep")
    name = out or key.get("out")
    if not name:
        raise UserError("no dataset name", where="--out", fix="name the new dataset version: --out NAME")
    source = key_path.parent / f"{safe_name(name, '--out')}-reviewed.jsonl"
    source.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples), encoding="utf-8")
    origin = Origin(source_kind="logs", parent_dataset=key.get("parent_dataset"), traffic_window=key.get("traffic_window"))
    # The texts were scrubbed when logged (unless --log full); the scrub runs again as for any file, in its report mode.
    return prepare_dataset(source, workspace, name=name, ratios=ratios, options=PrepareSpec(), origin=origin)
