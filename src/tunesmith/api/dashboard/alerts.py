"""Monitoring alerts as the dashboard shows them: the monitor's own reader of <home>/monitor/alerts.jsonl,
newest first and capped, so a long-watched model does not send the page every alert it ever had."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.monitor.alerts import read_alerts as read_all_alerts

MAX_ALERTS = 500


def read_alerts(home: Path, *, model: str | None = None, since: float | None = None) -> list[dict[str, Any]]:
    """Alerts for `model` (its name or run id) from `since` (unix s), newest first, at most MAX_ALERTS."""
    found = read_all_alerts(home, model=model, since=since)
    found.sort(key=lambda a: a.get("time") if isinstance(a.get("time"), (int, float)) else 0, reverse=True)
    return found[:MAX_ALERTS]
