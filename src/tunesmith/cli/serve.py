"""`tunesmith serve`: an OpenAI-compatible server for runs, export folders, GGUF files and base models."""

from __future__ import annotations

import typer

from tunesmith.cli.common import current_workspace

# Shared by `tunesmith serve` and `tunesmith api`, which serve through the same app.
LOG_OPTION = typer.Option(
    "redacted",
    "--log",
    help="off | redacted | full: log every answered request under <home>/traffic; redacted (the default) removes PII with the data pipeline's detectors first",
)
LOG_MAX_MB_OPTION = typer.Option(64.0, "--log-max-mb", help="start a new traffic log file past this size")
LOG_KEEP_FILES_OPTION = typer.Option(None, "--log-keep-files", help="keep at most this many traffic log files (the oldest go first)")
LOG_KEEP_DAYS_OPTION = typer.Option(30.0, "--log-keep-days", help="remove traffic log files last written more than this many days ago")


def serve_cmd(
    models: list[str] = typer.Argument(
        ..., help="run ids or names, run or export folders, .gguf files, base model names (several LoRA runs on one base share it)"
    ),
    host: str = typer.Option("127.0.0.1", help="address to bind; the default answers this machine only"),
    port: int = typer.Option(8000, min=1, max=65535),
    api_key_env: str | None = typer.Option(None, "--api-key-env", help="environment variable holding the API key every route but /health then requires"),
    engine: str = typer.Option("auto", help="auto | transformers | vllm | llamacpp (auto says which it picked and why)"),
    log: str = LOG_OPTION,
    log_max_mb: float = LOG_MAX_MB_OPTION,
    log_keep_files: int | None = LOG_KEEP_FILES_OPTION,
    log_keep_days: float | None = LOG_KEEP_DAYS_OPTION,
) -> None:
    """Serve models behind an OpenAI-compatible API (/v1/chat/completions, /v1/completions, /v1/models, /health, /metrics).
    Every answered request is logged under <home>/traffic with PII removed (--log; docs/monitoring.md)."""
    from tunesmith.workflows import serve

    serve(
        models,
        host=host,
        port=port,
        api_key_env=api_key_env,
        engine=engine,
        workspace=current_workspace(),
        log=log,
        log_max_mb=log_max_mb,
        log_keep_files=log_keep_files,
        log_keep_days=log_keep_days,
    )
