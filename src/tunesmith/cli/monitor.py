"""`tunesmith monitor MODEL`: drift, output health and quality of a served model's logged traffic; exit 1 on an alert."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from tunesmith.cli.common import current_workspace


def monitor_cmd(
    model: str = typer.Argument(..., help="a run id or name, or the model name clients ask the server for"),
    since: str = typer.Option("24h", "--since", help="the window: a duration back from now (90m, 24h, 7d) or a UTC time (2026-12-01T08:00)"),
    as_json: bool = typer.Option(False, "--json", help="print the report as one JSON object (also saved under <home>/monitor/reports/)"),
    webhook: str | None = typer.Option(None, "--webhook", help="POST the alerts as JSON to this http(s) URL when any fire"),
    config: Path | None = typer.Option(None, "--config", help="monitor.yaml: thresholds, drift test settings, judge (docs/monitoring.md)"),
) -> None:
    """Compare a window of logged traffic with the model's training data and its earlier window: input drift, output health, quality.
    Exit 0 no alert, 1 an alert fired, 2 bad input (unknown model, no traffic in the window, bad config)."""
    from tunesmith.monitor.report import monitor
    from tunesmith.ui import console, out

    workspace = current_workspace()
    report = monitor(model, since=since, config=config, webhook=webhook, workspace=workspace)
    if as_json:
        typer.echo(json.dumps(report.as_json(), ensure_ascii=False))
    else:
        print_report(report, workspace.home, out)
    if report.path is not None:
        console.print(f"report: {report.path}")
    if report.webhook_problem:
        console.print(
            f"[yellow]warning:[/] alerts not delivered to the webhook: {report.webhook_problem} (they are in {workspace.home / 'monitor' / 'alerts.jsonl'})"
        )
    if report.alerted:
        raise typer.Exit(1)


def print_report(report, home: Path, out) -> None:
    from rich.markup import escape
    from rich.table import Table

    from tunesmith.monitor.report import earlier_reports
    from tunesmith.monitor.window import iso

    past = [r for r in earlier_reports(home, report.model) if report.path is None or r != report.as_json()]
    against = f"training data {report.reference}" if report.reference else "no training data"
    out.print(f"[bold]{escape(report.model)}[/]: {report.requests} requests from {iso(report.since)} to {iso(report.until)}; compared with {escape(against)}")
    table = Table(title="checks")
    for column in ("check", "status", "value", "baseline", "threshold", "earlier runs", "detail"):
        table.add_column(column, overflow="fold")
    colour = {"alert": "red", "ok": "green", "skipped": "dim"}
    for c in report.checks:
        trend = " ".join(_num(p.get("checks", {}).get(c.name, {}).get("value")) for p in past[-4:])
        table.add_row(c.name, f"[{colour[c.status]}]{c.status}[/]", _num(c.value), _num(c.baseline), _num(c.threshold), trend, escape(c.message))
    out.print(table)
    for alert in report.alerts:
        out.print(f"[red]ALERT[/] {escape(alert['message'])}")
        for example in alert["examples"]:
            answer = f" -> {example['answer']!r}" if example.get("answer") is not None else ""
            out.print(f"  {escape(example['id'])}: {escape(repr(example['prompt']))}{escape(answer)}  [dim]({escape(example['why'])})[/]")
    if not report.alerts:
        out.print("[green]no alerts[/]")


def _num(x) -> str:
    return "-" if x is None else f"{x:.4g}" if isinstance(x, float) else str(x)
