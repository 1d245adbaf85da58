"""`tunesmith monitor MODEL`: read the window's traffic → compare with the training data and the earlier
window → alerts → save the report (and the alerts) → print."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.errors import UserError
from tunesmith.monitor.alerts import MONITOR_DIR, append_alerts, check_webhook, make_alert, post_webhook
from tunesmith.monitor.checks import CheckResult
from tunesmith.monitor.config import MonitorConfig, load_config
from tunesmith.monitor.drift import drift_checks
from tunesmith.monitor.health import health_checks
from tunesmith.monitor.quality import quality_check
from tunesmith.monitor.reference import Reference, build_reference
from tunesmith.monitor.text import DEFAULT_ENCODER, Encoder
from tunesmith.monitor.window import iso, now, parse_since, record_prompt, resolve_target, window_records
from tunesmith.serve.traffic import TrafficRecord
from tunesmith.workspace import Workspace


@dataclass
class MonitorReport:
    model: str
    run_id: str | None
    since: float
    until: float
    requests: int
    checks: list[CheckResult]
    alerts: list[dict[str, Any]] = field(default_factory=list)
    reference: str | None = None  # the training data compared with, name@version
    path: Path | None = None  # where the JSON report was saved
    webhook_problem: str | None = None

    @property
    def alerted(self) -> bool:
        return bool(self.alerts)

    def check(self, name: str) -> CheckResult:
        return next(c for c in self.checks if c.name == name)

    def as_json(self) -> dict[str, Any]:
        """The --json object: {"model", "window", "requests", "checks": {NAME: {...}}, "alerts": [...]}."""
        return {
            "model": self.model,
            "window": {"since": self.since, "until": self.until},
            "requests": self.requests,
            "checks": {c.name: c.as_json() for c in self.checks},
            "alerts": self.alerts,
        }


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")[:80] or "model"


def monitor(
    model: str,
    *,
    since: str | float = "24h",
    until: float | None = None,
    config: MonitorConfig | Path | str | None = None,
    webhook: str | None = None,
    workspace: Workspace | None = None,
    encoder: Encoder | None = None,
    save: bool = True,
) -> MonitorReport:
    """Check the window [since, until) of `model`'s traffic. Raises UserError (exit 2) for an unknown
    model or an empty window; alerts are in the report (the CLI exits 1 when there are any)."""
    workspace = workspace or Workspace.from_env()
    options = config if isinstance(config, MonitorConfig) else load_config(Path(config) if config is not None else None)
    if webhook is not None:
        check_webhook(webhook)
    until = now() if until is None else float(until)
    start = parse_since(since, until)
    if start >= until:
        raise UserError(f"the window is empty: --since {since!r} is not before {iso(until)}", fix="give an earlier --since")
    target = resolve_target(workspace, model)
    records = window_records(workspace.home, target, start, until)
    if not records:
        raise UserError(
            f"no traffic for '{model}' between {iso(start)} and {iso(until)} in {workspace.home / 'traffic'}",
            fix="widen --since, check the model name, and serve with logging on (`tunesmith serve MODEL --log redacted`)",
        )
    earlier = window_records(workspace.home, target, start - (until - start), start)
    reference, why = _reference(workspace, target.run_dir, encoder or DEFAULT_ENCODER, options)
    checks = check_window(records, earlier, reference, options, encoder or DEFAULT_ENCODER, why)
    at = time.time()
    alerts = [make_alert(c, model=model, run_id=target.run_id, since=start, until=until, at=at) for c in checks if c.status == "alert"]
    report = MonitorReport(model, target.run_id, start, until, len(records), checks, alerts, reference.dataset if reference else None)
    if save:
        append_alerts(workspace.home, alerts)
        report.path = save_report(workspace.home, report)
    if webhook is not None and alerts:
        report.webhook_problem = post_webhook(webhook, {"model": model, "run_id": target.run_id, "window": {"since": start, "until": until}, "alerts": alerts})
    return report


def check_window(
    records: list[TrafficRecord], earlier: list[TrafficRecord], reference: Reference | None, options: MonitorConfig, encoder: Encoder, why: str = ""
) -> list[CheckResult]:
    """Every check on one window: input drift against the reference, output health against the earlier
    window, quality by the judge. What `monitor` runs, and what the simulation runs window after window."""
    prompts = [(r.id, text) for r in records if (text := record_prompt(r)).strip()]
    return [
        *drift_checks(reference, prompts, options.drift, options.thresholds.alpha, encoder, why),
        *health_checks(records, earlier, reference.answers if reference else None, options.thresholds),
        quality_check(records, options.judge, options.thresholds, reference.eval_quality if reference else None, options.drift.seed),
    ]


def _reference(workspace: Workspace, run_dir: Path | None, encoder: Encoder, options: MonitorConfig) -> tuple[Reference | None, str]:
    if run_dir is None:
        return None, "the model is not a run of this workspace, so there is no training data to compare with"
    try:
        return build_reference(workspace, run_dir, encoder, sample=options.drift.reference_sample, seed=options.drift.seed), ""
    except UserError as exc:
        return None, f"no training data to compare with: {exc}"


def save_report(home: Path, report: MonitorReport) -> Path:
    folder = Path(home) / MONITOR_DIR / "reports"
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    path = folder / f"{_slug(report.model)}-{stamp}.json"
    n = 1
    while path.exists():
        path = folder / f"{_slug(report.model)}-{stamp}-{n}.json"
        n += 1
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report.as_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def earlier_reports(home: Path, model: str, limit: int = 5) -> list[dict[str, Any]]:
    """The model's last saved reports (oldest first), for the trend column."""
    folder = Path(home) / MONITOR_DIR / "reports"
    found = []
    for path in sorted(folder.glob(f"{_slug(model)}-*.json"))[-limit - 1 :] if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("model") == model:
            found.append(data)
    return found
