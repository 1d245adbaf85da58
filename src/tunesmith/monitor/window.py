"""Which traffic a monitor run looks at: the model (a run or a served name), the time window, and the
text of each record's prompt."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from tunesmith.errors import UserError
from tunesmith.serve.traffic import TrafficRecord, read_traffic
from tunesmith.workspace import Workspace

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
SINCE_FIX = "give a duration such as 90m, 24h, 7d or 2w, or a UTC time such as 2026-12-01T08:00"


def parse_since(since: str | float, now: float) -> float:
    """A duration back from `now` (30m, 24h, 7d), an ISO time (UTC when it names no zone) or unix seconds."""
    if isinstance(since, (int, float)):
        return float(since)
    text = since.strip()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhdw])", text, re.IGNORECASE)
    if match:
        return now - float(match.group(1)) * _UNITS[match.group(2).lower()]
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UserError(f"--since {since!r} is neither a duration nor a time", fix=SINCE_FIX) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Target:
    """The model asked about: the names its records may carry, and the run behind it (when there is one)."""

    name: str
    names: set[str]
    run_dir: Path | None
    run_id: str | None

    def matches(self, record: TrafficRecord) -> bool:
        return record.model in self.names or (self.run_id is not None and record.run_id == self.run_id)


def resolve_target(workspace: Workspace, model: str) -> Target:
    """A run id or name in the workspace, else a name served models were asked by (the run behind it
    taken from its records). Neither: bad input, exit 2."""
    from tunesmith.registry.runfolder import find_run, load_run_info

    try:
        run_dir = find_run(workspace, model)
    except UserError:
        run_dir = None
    if run_dir is not None:
        info = load_run_info(run_dir)
        return Target(model, {model, info.run_id}, run_dir, info.run_id)
    run_ids = {r.run_id for r in read_traffic(workspace.home, model=model) if r.model == model and r.run_id}
    seen = any(True for _ in read_traffic(workspace.home, model=model))
    if not seen:
        raise UserError(
            f"no run and no served traffic named '{model}' in {workspace.home}",
            fix="give a run id or name (`tunesmith runs list`) or the model name clients ask `tunesmith serve` for",
        )
    run_id = sorted(run_ids)[-1] if run_ids else None
    run_dir = workspace.run_dir(run_id) if run_id and (workspace.run_dir(run_id) / "run.json").is_file() else None
    return Target(model, {model} | ({run_id} if run_id else set()), run_dir, run_id)


def window_records(home: Path, target: Target, since: float, until: float) -> list[TrafficRecord]:
    return [r for r in read_traffic(home, since=since, until=until) if target.matches(r)]


def record_prompt(record: TrafficRecord) -> str:
    """What the user sent: the user turns of a chat (the system prompt is the deployment's, not the
    user's, and would hide drift), or a completion's prompt."""
    if record.messages:
        users = [m.get("content") for m in record.messages if m.get("role") == "user"]
        return "\n".join(_text(u) for u in users if u)
    return record.prompt or ""


def _text(content: object) -> str:
    """Chat content is a string or a list of parts ({"type": "text", "text": ...})."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def now() -> float:
    return time.time()
