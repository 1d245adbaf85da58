"""`tunesmith serve`: an OpenAI-compatible server for runs, export folders, GGUF files and base models."""

from __future__ import annotations

import typer

from tunesmith.cli.common import current_workspace


def serve_cmd(
    models: list[str] = typer.Argument(
        ..., help="run ids or names, run or export folders, .gguf files, base model names (several LoRA runs on one base share it)"
    ),
    host: str = typer.Option("127.0.0.1", help="address to bind; the default answers this machine only"),
    port: int = typer.Option(8000, min=1, max=65535),
    api_key_env: str | None = typer.Option(None, "--api-key-env", help="environment variable holding the API key every route but /health then requires"),
    engine: str = typer.Option("auto", help="auto | transformers | vllm | llamacpp (auto says which it picked and why)"),
) -> None:
    """Serve models behind an OpenAI-compatible API (/v1/chat/completions, /v1/completions, /v1/models, /health, /metrics)."""
    from tunesmith.workflows import serve

    serve(models, host=host, port=port, api_key_env=api_key_env, engine=engine, workspace=current_workspace())
