"""`tunesmith api`: the self-hosted OpenAI fine-tuning service (files, fine-tuning jobs, models, chat),
with its worker; `tunesmith worker`: a worker alone (more slots, another machine sharing the workspace);
`tunesmith api keys`: the keys the service asks for."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from tunesmith.cli.api_keys import keys_app
from tunesmith.cli.common import current_workspace
from tunesmith.cli.serve import LOG_KEEP_DAYS_OPTION, LOG_KEEP_FILES_OPTION, LOG_MAX_MB_OPTION, LOG_OPTION
from tunesmith.ui import console

if TYPE_CHECKING:
    from tunesmith.serve.traffic_log import LogSettings

PARENT_ENV = "TUNESMITH_API_PID"  # the worker `tunesmith api` starts ends with it
EXECUTOR_HELP = "local (child processes on this machine, the default) or ray (Ray Jobs on the cluster at --ray-address or RAY_ADDRESS)"

api_app = typer.Typer(
    invoke_without_command=True,
    no_args_is_help=False,
    help="Serve OpenAI's fine-tuning API (files, fine_tuning.jobs, models, chat.completions) over this workspace; see docs/api.md.",
)


@api_app.callback()
def api_cmd(
    ctx: typer.Context,
    host: str = typer.Option("127.0.0.1", help="address to bind; the default answers this machine only"),
    port: int = typer.Option(8000, min=1, max=65535),
    workers: int = typer.Option(1, "--workers", min=0, help="jobs trained at once (0: start no worker; run `tunesmith worker` yourself)"),
    executor: str = typer.Option("local", "--executor", help=EXECUTOR_HELP),
    ray_address: str | None = typer.Option(None, "--ray-address", help="the Ray cluster for --executor ray (default: RAY_ADDRESS)"),
    max_upload_mb: float = typer.Option(512, "--max-upload-mb", min=0.001, help="largest file files.create accepts"),
    base_model: list[Path] = typer.Option([], "--base-model", help="a model folder jobs may fine-tune, named by its folder's name (repeatable)"),
    log: str = LOG_OPTION,
    log_max_mb: float = LOG_MAX_MB_OPTION,
    log_keep_files: int | None = LOG_KEEP_FILES_OPTION,
    log_keep_days: float | None = LOG_KEEP_DAYS_OPTION,
) -> None:
    """Start the service on HOST:PORT and its worker (`--workers N` jobs at once; others wait in queued); the dashboard is at http://HOST:PORT/.
    Chat and completion requests are logged under <home>/traffic with PII removed (--log; docs/monitoring.md)."""
    if ctx.invoked_subcommand is not None:
        return
    from tunesmith.serve.traffic_log import log_settings

    settings = log_settings(log, max_mb=log_max_mb, keep_files=log_keep_files, keep_days=log_keep_days)
    start_service(host, port, workers, executor, ray_address, max_upload_mb, base_model, settings)


def start_service(
    host: str, port: int, workers: int, executor: str, ray_address: str | None, max_upload_mb: float, base_model: list[Path], log: LogSettings | None = None
) -> None:
    """The API, its dashboard and its worker, until interrupted (`tunesmith api` and `tunesmith ui`)."""
    from tunesmith.api.worker import check_executor

    check_executor(executor)  # here, not only in the worker process, whose refusal the service would outlive
    import uvicorn

    from tunesmith.api.app import create_api_app
    from tunesmith.api.jobs import Catalogue

    workspace = current_workspace()
    catalogue = Catalogue(_model_folders(base_model))
    app = create_api_app(workspace, catalogue, max_upload=int(max_upload_mb * 2**20), log=log)
    worker = _start_worker(workspace.home, workers, executor, ray_address, base_model) if workers else None
    console.print(f"tunesmith api on http://{host}:{port}/v1 (workspace {workspace.home}; {workers} job(s) at once, executor {executor})")
    console.print(f"dashboard: http://{host}:{port}/")
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=30)


def _model_folders(folders: list[Path]) -> list[Path]:
    from tunesmith.errors import UserError

    for folder in folders:
        if not (folder / "config.json").is_file():
            raise UserError(f"--base-model {folder} is not a model folder (no config.json)", fix="give a Hugging Face model folder")
    return folders


def _start_worker(home: Path, slots: int, executor: str, ray_address: str | None, base_model: list[Path]) -> subprocess.Popen:
    command = [sys.executable, "-m", "tunesmith", "worker", "--slots", str(slots), "--executor", executor]
    command += ["--ray-address", ray_address] if ray_address else []
    return subprocess.Popen(command, env={**os.environ, "TUNESMITH_HOME": str(home), PARENT_ENV: str(os.getpid())})


def worker_cmd(
    slots: int = typer.Option(1, "--slots", min=1, help="jobs trained at once by this worker"),
    executor: str = typer.Option("local", "--executor", help=EXECUTOR_HELP),
    ray_address: str | None = typer.Option(None, "--ray-address", help="the Ray cluster for --executor ray (default: RAY_ADDRESS)"),
) -> None:
    """Take fine-tuning jobs from the workspace's queue (api.db) and train them; a job whose worker died is resumed."""
    from tunesmith.api.worker import Worker, executor_for

    workspace = current_workspace()
    options = {"address": ray_address} if executor == "ray" else {"log_dir": workspace.home / "jobs"}
    parent = os.environ.get(PARENT_ENV)
    Worker(workspace, executor_for(executor, **options), slots).run_forever(int(parent) if parent and parent.isdigit() else None)


api_app.add_typer(keys_app, name="keys")
