"""`tunesmith ui`: the dashboard over this workspace. It is `tunesmith api` under another name (the same
app, its worker included), so the dashboard's buttons work: start, cancel, pause and resume jobs, chat."""

from __future__ import annotations

from pathlib import Path

import typer

from tunesmith.cli.serve import LOG_KEEP_DAYS_OPTION, LOG_KEEP_FILES_OPTION, LOG_MAX_MB_OPTION, LOG_OPTION


def ui_cmd(
    host: str = typer.Option("127.0.0.1", help="address to bind; the default answers this machine only"),
    port: int = typer.Option(8000, min=1, max=65535),
    workers: int = typer.Option(1, "--workers", min=0, help="jobs trained at once (0: the dashboard only shows and queues jobs)"),
    base_model: list[Path] = typer.Option([], "--base-model", help="a model folder jobs may fine-tune, named by its folder's name (repeatable)"),
    log: str = LOG_OPTION,
    log_max_mb: float = LOG_MAX_MB_OPTION,
    log_keep_files: int | None = LOG_KEEP_FILES_OPTION,
    log_keep_days: float | None = LOG_KEEP_DAYS_OPTION,
) -> None:
    """Open the dashboard (runs, jobs, datasets, evaluations, playground, alerts) at http://HOST:PORT/; see docs/dashboard.md."""
    from tunesmith.cli.api import start_service
    from tunesmith.serve.traffic_log import log_settings

    settings = log_settings(log, max_mb=log_max_mb, keep_files=log_keep_files, keep_days=log_keep_days)
    start_service(host, port, workers, "local", None, 512, base_model, settings)
