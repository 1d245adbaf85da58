"""`tunesmith export`: a trained run written for another runtime, checked to behave as trained (tunesmith.workflows.export)."""

from __future__ import annotations

from pathlib import Path

import typer

from tunesmith.cli.common import current_workspace
from tunesmith.ui import console


def export_cmd(
    run: str = typer.Argument(..., help="run id, the run's --name, or run folder"),
    to: str = typer.Option(..., "--to", help="merged | adapter | gguf | ollama"),
    out: Path | None = typer.Option(None, "--out", help="the folder to write (default: runs/<run-id>/exports/<to>[-<quantize>]/); must be new or empty"),
    quantize: str | None = typer.Option(None, "--quantize", help="gguf and ollama: f16 | q8_0 | q4_k_m"),
    runtime: str | None = typer.Option(None, "--runtime", help="adapter: vllm (default; refuses DoRA, modules_to_save, prompt/prefix tuning) | peft"),
    verify: bool = typer.Option(
        True, "--verify/--no-verify", help="load the export in its runtime and compare greedy answers with tunesmith's on held-out prompts"
    ),
    verify_examples: int = typer.Option(32, "--verify-examples", min=1, help="how many held-out test prompts verification asks"),
    force: bool = typer.Option(False, "--force", help="replace --out when it already holds files"),
) -> None:
    """Write a tuned model for transformers, vLLM, llama.cpp or Ollama, and check it answers as it did in tunesmith (exit 1 if not)."""
    from rich.markup import escape

    from tunesmith.workflows import export

    result = export(
        run, to=to, out=out, quantize=quantize, verify=verify, verify_examples=verify_examples, runtime=runtime, force=force, workspace=current_workspace()
    )
    record = result.record
    console.print(
        escape(f"exported {record['source_run']['run_id']} --to {result.target} ({result.runtime}): {result.folder}"), highlight=False, soft_wrap=True
    )
    console.print(f"size: {_size(result.total_bytes)} in {len(record['files'])} files")
    for note in record["notes"]:
        console.print(escape(f"note: {note}"), highlight=False, soft_wrap=True)
    verification = result.verification
    if verification.get("skipped"):
        console.print("verification: skipped (--no-verify)")
    else:
        from tunesmith.export.verify import Verification

        console.print(escape(f"verification: {Verification(**verification).summary()}"), highlight=False, soft_wrap=True)
    console.print(escape(f"use: {result.usage}"), highlight=False, soft_wrap=True)
    typer.echo(str(result.folder))  # stdout carries the folder alone, for scripts


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
