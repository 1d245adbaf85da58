"""Monitoring alerts as the dashboard shows them: <home>/monitor/alerts.jsonl, one alert a line, in the
shape agreed with the monitor (docs/dashboard.md). Read here, newest first, skipping a damaged line
(the monitor may be appending while we read) rather than failing the page.

TODO(lead): point at tunesmith.monitor.alerts.read_alerts once the monitor's reader is merged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MAX_ALERTS = 500


def alerts_file(home: Path) -> Path:
    return home / "monitor" / "alerts.jsonl"


def read_alerts(home: Path, *, model: str | None = None, since: float | None = None) -> list[dict[str, Any]]:
    """Alerts for `model` (its name or run id) from `since` (unix s), newest first, at most MAX_ALERTS."""
    path = alerts_file(home)
    if not path.is_file():
        return []
    found = []
    with path.open(encoding="utf-8", errors="replace") as handle:
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
    found.sort(key=lambda a: a.get("time") if isinstance(a.get("time"), (int, float)) else 0, reverse=True)
    return found[:MAX_ALERTS]
