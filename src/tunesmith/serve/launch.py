"""From `tunesmith serve MODEL ... --engine E` to a running server: resolve the MODELs, pick the
engine (saying which and why), load, and run the app under uvicorn (or vLLM's own server)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tunesmith.errors import UserError
from tunesmith.serve.models import Served, Source, resolve
from tunesmith.serve.traffic_log import LogSettings, TrafficLog, open_log
from tunesmith.workspace import Workspace

ENGINES = ("auto", "transformers", "vllm", "llamacpp")


@dataclass
class Server:
    app: Any  # the FastAPI app
    served: list[Served]
    engine: str  # what answers: "transformers", "llamacpp", or both joined by "+"
    reason: str  # why that engine, in words
    traffic: TrafficLog | None = None  # where answered requests are logged (None: --log off)

    def close(self) -> None:
        for engine in self.app.state.engines:
            engine.close()
        if self.traffic is not None:
            self.traffic.close()  # what is still queued is scrubbed and written before the process ends


def api_key_from(env_var: str | None) -> str | None:
    if env_var is None:
        return None
    key = os.environ.get(env_var, "")
    if not key.strip():
        raise UserError(f"--api-key-env names {env_var}, which is not set (or empty)", fix=f"export {env_var}=<a long random key>, or leave out --api-key-env")
    return key.strip()


def resolve_all(models: Sequence[str], workspace: Workspace) -> list[Source]:
    if not models:
        raise UserError("no model to serve", fix="name at least one: a run id, an export folder, a .gguf file or a base model")
    sources = [resolve(str(m), workspace) for m in models]
    seen: dict[str, str] = {}
    for source in sources:
        for name in list(source.names):
            if name in seen and seen[name] != source.arg:
                if name == source.names[0]:
                    raise UserError(f"{seen[name]} and {source.arg} would both be served as '{name}'", fix="serve each model once")
                source.names.remove(name)  # an ambiguous alias (two runs with one --name): each keeps its run id
                continue
            seen[name] = source.arg
    return sources


def choose_engine(engine: str, sources: list[Source]) -> tuple[str, str]:
    """(engine, reason): vLLM when asked or, under auto, when installed with a GPU; else transformers
    for runs and model folders and llama.cpp for GGUF files."""
    from tunesmith.serve import vllm

    if engine not in ENGINES:
        raise UserError(f"unknown engine '{engine}'", where="--engine", fix=f"use one of: {', '.join(ENGINES)}")
    ggufs = [s for s in sources if s.kind == "gguf"]
    if engine == "transformers" and ggufs:
        raise UserError(f"{ggufs[0].arg} is a GGUF file, which the transformers engine does not load", fix="serve it with --engine llamacpp (or auto)")
    if engine == "llamacpp" and len(ggufs) < len(sources):
        other = next(s for s in sources if s.kind != "gguf")
        fix = (
            f"export it first: `tunesmith export {other.arg} --to gguf`, then serve the export"
            if other.kind == "run"
            else "serve it with --engine transformers"
        )
        raise UserError(f"{other.arg} is not a GGUF file, which --engine llamacpp needs", fix=fix)
    if engine != "auto":
        return engine, "asked for with --engine"
    if not ggufs:
        usable, why = vllm.usable()
        if usable:
            return "vllm", "auto: vLLM is installed and a GPU is visible"
        return "transformers", f"auto: {why}; the transformers engine batches requests on {'GPU' if _cuda() else 'CPU'}"
    if len(ggufs) == len(sources):
        return "llamacpp", "auto: every model is a GGUF file"
    return "transformers+llamacpp", "auto: llama.cpp for the GGUF files, transformers for the others"


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def open_server(
    models: Sequence[str],
    *,
    engine: str = "auto",
    api_key: str | None = None,
    workspace: Workspace,
    max_batch: int = 32,
    n_ctx: int | None = None,
    log: LogSettings | None = None,
) -> Server:
    """Load every model and build the app (the vLLM engine is a separate process: see `serve`).
    `log`: how answered requests are logged under <home>/traffic (default: redacted)."""
    sources = resolve_all(models, workspace)
    return _open(sources, *choose_engine(engine, sources), api_key=api_key, max_batch=max_batch, n_ctx=n_ctx, log=log, home=workspace.home)


def _open(
    sources: list[Source],
    chosen: str,
    reason: str,
    *,
    api_key: str | None,
    max_batch: int = 32,
    n_ctx: int | None = None,
    log: LogSettings | None = None,
    home: Any = None,
) -> Server:
    from tunesmith.serve.app import create_app

    if chosen == "vllm":
        raise UserError("the vLLM engine runs as its own server process", fix="start it with `tunesmith serve ... --engine vllm`")
    served: list[Served] = []
    others = [s for s in sources if s.kind != "gguf"]
    ggufs = [s for s in sources if s.kind == "gguf"]
    if others:
        from tunesmith.serve.models import load_transformers

        served += load_transformers(others, max_batch=max_batch)
    if ggufs:
        from tunesmith.serve.llamacpp import load_llamacpp

        served += load_llamacpp(ggufs, n_ctx=n_ctx)
    traffic = open_log(home, log) if home is not None else None
    app = create_app(served, api_key=api_key, engine_name=chosen, traffic=traffic)
    return Server(app, served, chosen, reason, traffic)


def serve(
    models: Sequence[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key_env: str | None = None,
    engine: str = "auto",
    workspace: Workspace,
    log: LogSettings | None = None,
) -> None:
    """Serve until interrupted."""
    from tunesmith.serve import vllm
    from tunesmith.ui import console

    key = api_key_from(api_key_env)
    if host not in ("127.0.0.1", "localhost", "::1") and key is None:
        console.print(f"[yellow]warning:[/] serving on {host} without an API key: anyone who can reach this port can use the models (add --api-key-env VAR)")
    sources = resolve_all(models, workspace)
    chosen, reason = choose_engine(engine, sources)
    if chosen == "vllm":
        console.print(f"engine: vllm ({reason})")
        if (log or LogSettings()).mode != "off":
            console.print("[yellow]note:[/] vLLM answers from its own server process: its traffic is not logged (serve with --engine transformers to log it)")
        raise SystemExit(vllm.run(sources, host=host, port=port, api_key=key))
    console.print(f"engine: {chosen} ({reason}); loading {len(sources)} model(s)")
    server = _open(sources, chosen, reason, api_key=key, log=log, home=workspace.home)
    import uvicorn

    for item in server.served:
        console.print(f"serving {', '.join(item.names)}")
    console.print(f"OpenAI-compatible API at http://{host}:{port}/v1" + (" (API key required)" if key else ""))
    if server.traffic is not None:
        console.print(f"traffic logged ({server.traffic.mode}) under {workspace.home / 'traffic'}")
    try:
        uvicorn.run(server.app, host=host, port=port, log_level="warning")
    finally:
        server.close()
