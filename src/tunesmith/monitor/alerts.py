"""Alerts: one JSON line each in <home>/monitor/alerts.jsonl (the shape is in docs/monitoring.md and
INTERFACES.md; the dashboard and `data from-logs --only alerted` read it), and an optional webhook POST."""

from __future__ import annotations

import json
import secrets
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tunesmith.errors import UserError
from tunesmith.monitor.checks import EXAMPLES_SHOWN, CheckResult, clip

MONITOR_DIR = "monitor"
ALERTS_FILE = "alerts.jsonl"


def alerts_path(home: Path) -> Path:
    return Path(home) / MONITOR_DIR / ALERTS_FILE


def make_alert(check: CheckResult, *, model: str, run_id: str | None, since: float, until: float, at: float) -> dict[str, Any]:
    return {
        "id": f"alert-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(at))}-{secrets.token_hex(3)}",
        "time": at,
        "model": model,
        "run_id": run_id,
        "check": check.name,
        "status": "alert",
        "value": check.as_json()["value"],
        "baseline": check.as_json()["baseline"],
        "threshold": check.as_json()["threshold"],
        "window": {"since": since, "until": until},
        "request_ids": [e.id for e in check.evidence],
        "examples": [{"id": e.id, "prompt": clip(e.prompt), "answer": clip(e.answer), "why": e.why} for e in check.evidence[:EXAMPLES_SHOWN]],
        "message": f"{check.name}: {check.message}",
    }


def append_alerts(home: Path, alerts: list[dict[str, Any]]) -> None:
    """Whole lines appended: a reader never sees half an alert (one write per line, small lines)."""
    if not alerts:
        return
    path = alerts_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        for alert in alerts:
            handle.write(json.dumps(alert, ensure_ascii=False) + "\n")


def read_alerts(home: Path, *, model: str | None = None, since: float | None = None) -> list[dict[str, Any]]:
    """Alerts oldest first; `model` matches the model name or the run id, `since` is unix seconds.
    A torn or foreign line is skipped: the file is a log, not input."""
    path = alerts_path(home)
    if not path.is_file():
        return []
    found = []
    with open(path, encoding="utf-8", errors="replace") as handle:  # a torn multi-byte character is one bad line, not a failure
        for line in handle:
            try:
                alert = json.loads(line)
            except ValueError:
                continue
            if not isinstance(alert, dict):
                continue
            if model is not None and model not in (alert.get("model"), alert.get("run_id")):
                continue
            if since is not None and not (isinstance(alert.get("time"), (int, float)) and alert["time"] >= since):
                continue
            found.append(alert)
    return found


def check_webhook(url: str) -> str:
    """Only http(s): a file:// or ftp:// "webhook" would have the monitor read or write elsewhere."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UserError(
            f"--webhook {url!r} is not an http(s) URL", fix="give a URL such as https://hooks.example.com/tunesmith or http://127.0.0.1:9000/alerts"
        )
    return url


def post_webhook(url: str, payload: dict[str, Any], timeout: float = 10.0) -> str | None:
    """POST the alerts as JSON; the problem as a sentence when it could not be delivered (the alerts are
    in alerts.jsonl either way, so a down receiver does not lose them)."""
    request = urllib.request.Request(
        check_webhook(url), data=json.dumps(payload).encode(), headers={"Content-Type": "application/json", "User-Agent": "tunesmith-monitor"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - scheme checked above
            if response.status >= 300:
                return f"the webhook answered HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return f"the webhook answered HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return f"the webhook could not be reached: {getattr(exc, 'reason', exc)}"
    return None
