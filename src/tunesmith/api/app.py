"""The service's HTTP side: OpenAI's Files, Fine-tuning jobs and Models routes over api.db, and chat
completions for fine-tuned models and their checkpoints through the serving layer (tunesmith.serve),
each model loaded on its first request.

Statuses: the openai client retries 408, 409, 429 and 5xx by itself, so every final refusal here is a
400 (bad request, wrong state) or a 404 (no such object), in OpenAI's error body. Request bodies are
bounded while they arrive (uploads by --max-upload-mb), not after."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunesmith.api.jobs import Catalogue, CreateJob, create_job, present, present_checkpoint, present_event, refuse
from tunesmith.api.keys import KeyStore
from tunesmith.api.store import ApiStore, api_db, now
from tunesmith.errors import UserError
from tunesmith.serve.app import Gate, _param_of
from tunesmith.serve.protocol import ServeError, error_body
from tunesmith.serve.traffic_log import LogSettings, TrafficLog, open_log
from tunesmith.workspace import Workspace

log = logging.getLogger("tunesmith.api")

MAX_BODY_BYTES = 1 << 20
CHAT_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})
METADATA_KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def create_api_app(
    workspace: Workspace, catalogue: Catalogue | None = None, *, max_upload: int = 512 << 20, max_body: int = MAX_BODY_BYTES, log: LogSettings | None = None
) -> Any:
    """The ASGI app: the key and size gate, around the chat router, around the OpenAI routes and the
    dashboard (whose static shell alone is open: its data routes need the key like the API's). `log`: how
    chat and completion requests are logged under <home>/traffic (default redacted; serve/traffic_log.py)."""
    from tunesmith.api import dashboard

    store = ApiStore(workspace)
    catalogue = catalogue or Catalogue()
    traffic = open_log(workspace.home, log)
    app = routes(store, catalogue, max_upload)
    dashboard.add_dashboard(app, store, catalogue, workspace, max_upload)
    app.state.traffic = traffic  # written out when the service shuts down (routes' lifespan)
    chat = ChatRouter(app, store, catalogue, workspace, max_body, traffic)
    app.state.forget = chat.forget  # a deleted model's weights leave memory
    return Gate(
        chat,
        keys=KeyStore(api_db(workspace)),
        max_body=max_body,
        path_limits={"/v1/files": max_upload},
        open_paths=dashboard.OPEN_PATHS,
        open_prefixes=dashboard.OPEN_PREFIXES,
    )


# ---------------------------------------------------------------- chat through the serving layer


class ChatRouter:
    """Pure ASGI: a chat or completion request goes to the serving layer's own app for its model (a
    fine-tuned model, one of its checkpoints, or a base), loaded on the first request and kept."""

    def __init__(self, app: Any, store: ApiStore, catalogue: Catalogue, workspace: Workspace, max_body: int, traffic: TrafficLog | None = None):
        self.app, self.store, self.catalogue, self.workspace, self.max_body = app, store, catalogue, workspace, max_body
        self.traffic = traffic
        self.served: dict[str, Any] = {}
        self.lock = asyncio.Lock()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] not in CHAT_PATHS or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            body, more = body + message.get("body", b""), message.get("more_body", False)
        try:
            parsed = json.loads(body or b"null")
            name = parsed.get("model")
        except (ValueError, AttributeError):
            parsed, name = None, None
        try:
            target = await self.app_for(name) if isinstance(name, str) else None
        except ServeError as exc:
            self.log_refusal(scope["path"], parsed, exc)
            return await JSONResponse(exc.body(), status_code=exc.status)(scope, receive, send)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        # No usable model name: the serving app's own checks answer (missing parameter, bad JSON), over no model.
        await (target or self.app_for_nothing())(scope, replay, send)

    def log_refusal(self, path: str, body: Any, exc: ServeError) -> None:
        """A request refused before any serving app saw it (an unknown or deleted model) is logged too."""
        if self.traffic is None:
            return
        from tunesmith.serve.protocol import new_id
        from tunesmith.serve.traffic_log import Trace

        chat = path == "/v1/chat/completions"
        trace = Trace("chat.completions" if chat else "completions")
        trace.read(body)
        self.traffic.submit(trace.record(new_id("chatcmpl" if chat else "cmpl"), status=exc.status, error=exc.message))

    def app_for_nothing(self) -> Any:
        if "" not in self.served:
            from tunesmith.serve.app import create_app

            self.served[""] = create_app([], max_body=self.max_body, traffic=self.traffic)
        return self.served[""]

    async def app_for(self, name: str) -> Any:
        async with self.lock:  # one load per model, however many requests arrive for it at once
            if name not in self.served:
                folder = self.folder_of(name)
                try:
                    self.served[name] = await asyncio.to_thread(self._load, name, folder)
                except UserError as exc:  # a model that cannot be served (its files gone, say): final, so not a 5xx
                    raise ServeError(400, f"The model '{name}' cannot be served: {exc}", param="model", code="model_not_available") from None
            return self.served[name]

    def folder_of(self, name: str) -> str:
        """The run folder, checkpoint folder or base model a model id names (404 when none)."""
        job = self.store.job_by_model(name)
        if job is not None and not job["model_deleted"]:
            return str(self.workspace.run_dir(job["run_id"]))
        checkpoint = self.store.checkpoint_by_model(name)
        if checkpoint is not None:
            parent = self.store.job(checkpoint["job_id"])
            folder = self.workspace.run_dir(parent["run_id"]) / "checkpoints" / f"step-{checkpoint['step']}" if parent else None
            if folder is not None and folder.is_dir() and not parent["model_deleted"]:
                return str(folder)
            raise ServeError(404, f"The checkpoint '{name}' is no longer kept (training keeps the latest and the best).", param="model", code="model_not_found")
        base = self.catalogue.base_path(name)
        if base is not None:
            return base
        run = self._registered_run(name)
        if run is not None:  # a run trained outside the service (`tunesmith train`), by its run id: the dashboard's playground
            return run
        raise ServeError(404, f"The model '{name}' does not exist.", param="model", code="model_not_found")

    def _registered_run(self, name: str) -> str | None:
        """The folder the registry records for a completed run with this id (an index lookup: the name never becomes a path)."""
        from tunesmith.registry.store import Registry

        if not self.workspace.registry_db.is_file():
            return None
        row = Registry(self.workspace.registry_db).run(name)
        return row["path"] if row is not None and row["status"] == "completed" else None

    def _load(self, name: str, folder: str) -> Any:
        from tunesmith.serve.app import create_app
        from tunesmith.serve.models import load_transformers, resolve

        source = resolve(folder, self.workspace)
        source.names = [name]
        served = load_transformers([source])
        for item in served:  # the traffic log names the run (and checkpoint) behind an ft: model id
            item.run_id, item.checkpoint = self.lineage_of(name, item.run_id)
        return create_app(served, max_body=self.max_body, traffic=self.traffic)

    def lineage_of(self, name: str, run_id: str | None) -> tuple[str | None, str | None]:
        job = self.store.job_by_model(name)
        if job is not None:
            return job["run_id"], None
        checkpoint = self.store.checkpoint_by_model(name)
        if checkpoint is not None:
            parent = self.store.job(checkpoint["job_id"])
            return (parent["run_id"] if parent else run_id), f"step-{checkpoint['step']}"
        return run_id, None

    def forget(self, name: str) -> None:
        for key in [k for k in self.served if k == name or k.startswith(name + ":")]:
            engines = self.served.pop(key).state.engines
            for engine in engines:
                engine.close()


# ---------------------------------------------------------------- the OpenAI routes


def _page(rows: list[dict[str, Any]], has_more: bool, present_row: Any) -> dict[str, Any]:
    data = [present_row(r) for r in rows]
    return {"object": "list", "data": data, "has_more": has_more, "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}


def present_file(row: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "bytes", "created_at", "filename", "purpose", "status")
    return {"object": "file", **{k: row[k] for k in keys}, "expires_at": None, "status_details": None}


def model_card(model_id: str, created: int, owned_by: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": owned_by}


def routes(store: ApiStore, catalogue: Catalogue, max_upload: int) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        store.sweep_partial_uploads()
        yield
        traffic = getattr(app.state, "traffic", None)
        if traffic is not None:
            traffic.close()

    app = FastAPI(title="tunesmith fine-tuning service", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, exc: ServeError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request", "type": ""}
        param = _param_of(tuple(p for p in first["loc"] if p not in ("query", "path", "form")))
        if first.get("type") == "extra_forbidden":
            message, code = f"Unrecognized request argument supplied: {param}", "unrecognized_argument"
        elif first.get("type") == "missing":
            message, code = f"Missing required parameter: '{param}'.", "missing_required_parameter"
        else:
            message, code = f"Invalid value for '{param}': {first['msg']}.", "invalid_value"
        return JSONResponse(error_body(message, "invalid_request_error", param or None, code), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, ServeError):  # FastAPI wraps what went wrong reading a body (one too large, say)
            return JSONResponse(exc.__cause__.body(), status_code=exc.__cause__.status)
        unknown = exc.status_code in (404, 405)
        message = f"Unknown request URL: {request.method} {request.url.path}." if unknown else str(exc.detail)
        return JSONResponse(
            error_body(message, "invalid_request_error", None, "unknown_url" if unknown else None), status_code=404 if unknown else exc.status_code
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error answering %s %s", request.method, request.url.path)
        return JSONResponse(error_body("The server had an error while processing your request.", "server_error"), status_code=500)

    def job_or_404(job_id: str) -> dict[str, Any]:
        job = store.job(job_id)
        if job is None:
            raise refuse(f"No fine-tuning job found with id '{job_id}'.", "fine_tuning_job_id", "fine_tuning_job_not_found", 404)
        return job

    def file_or_404(file_id: str) -> dict[str, Any]:
        found = store.file(file_id)
        if found is None:
            raise refuse(f"No such File object: {file_id}", "file_id", "file_not_found", 404)
        return found

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok"}

    # ------------------------------------------------------------ files

    @app.post("/v1/files")
    async def upload_file(file: UploadFile = File(...), purpose: str = Form(...)) -> dict[str, Any]:
        if purpose != "fine-tune":
            raise refuse(f"purpose '{purpose[:40]}' is not accepted here; this server takes files with purpose 'fine-tune'.", "purpose", "invalid_value")
        name = Path(file.filename or "upload.jsonl").name[:255] or "upload.jsonl"  # a label only: the bytes are stored under a new id
        row = await run_in_threadpool(store.save_file, file.file, name, purpose, max_upload)
        if row is None:
            raise refuse(f"The file is larger than this server accepts ({max_upload} bytes).", "file", "file_too_large")
        return present_file(row)

    @app.get("/v1/files")
    async def list_files(
        purpose: str | None = None, limit: int = Query(10_000, ge=1, le=10_000), order: str = Query("desc", pattern="^(asc|desc)$"), after: str | None = None
    ) -> dict[str, Any]:
        rows, more = store.list_files(purpose, order, after, limit)
        return _page(rows, more, present_file)

    @app.get("/v1/files/{file_id}")
    async def get_file(file_id: str) -> dict[str, Any]:
        return present_file(file_or_404(file_id))

    @app.delete("/v1/files/{file_id}")
    async def delete_file(file_id: str) -> dict[str, Any]:
        file_or_404(file_id)
        store.delete_file(file_id)
        return {"id": file_id, "object": "file", "deleted": True}

    @app.get("/v1/files/{file_id}/content")
    async def file_content(file_id: str) -> FileResponse:
        file_or_404(file_id)
        return FileResponse(store.file_path(file_id), media_type="application/octet-stream")

    # ------------------------------------------------------------ fine-tuning jobs

    @app.post("/v1/fine_tuning/jobs")
    async def create(body: CreateJob) -> dict[str, Any]:
        return present(await run_in_threadpool(create_job, store, catalogue, body))

    @app.get("/v1/fine_tuning/jobs")
    async def list_jobs(request: Request, after: str | None = None, limit: int = Query(20, ge=1, le=1000)) -> dict[str, Any]:
        wanted = {k[len("metadata[") : -1]: v for k, v in request.query_params.multi_items() if k.startswith("metadata[") and k.endswith("]")}
        for key in wanted:
            if not METADATA_KEY.fullmatch(key):  # keys become a JSON path in the query: only plain ones
                raise refuse(
                    f"metadata filter key '{key[:64]}': use letters, digits, '_', '-', '.' (1-64 characters).", f"metadata[{key[:64]}]", "invalid_value"
                )
        rows, more = store.list_jobs(wanted, after, limit)
        return {"object": "list", "data": [present(r) for r in rows], "has_more": more}

    @app.get("/v1/fine_tuning/jobs/{fine_tuning_job_id}")
    async def get_job(fine_tuning_job_id: str) -> dict[str, Any]:
        return present(job_or_404(fine_tuning_job_id))

    @app.post("/v1/fine_tuning/jobs/{fine_tuning_job_id}/cancel")
    async def cancel(fine_tuning_job_id: str) -> dict[str, Any]:
        job = job_or_404(fine_tuning_job_id)
        # not started (or paused): cancelled at once; running: the run stops after its current optimiser step
        if store.update_job(job["id"], when=("validating_files", "queued", "paused"), status="cancelled", finished_at=now(), requested=None):
            store.add_event(job["id"], "cancelled", "The job was cancelled.")
        elif not store.update_job(job["id"], when=("running",), requested="cancel"):
            raise refuse(
                f"Job {job['id']} has already {job_or_404(job['id'])['status']}; only a job that has not ended can be cancelled.", None, "invalid_job_state"
            )
        return present(job_or_404(job["id"]))

    @app.post("/v1/fine_tuning/jobs/{fine_tuning_job_id}/pause")
    async def pause(fine_tuning_job_id: str) -> dict[str, Any]:
        job = job_or_404(fine_tuning_job_id)
        if not store.update_job(job["id"], when=("running",), requested="pause"):
            raise refuse(f"Job {job['id']} is {job['status']}; only a running job can be paused.", None, "invalid_job_state")
        return present(job_or_404(job["id"]))

    @app.post("/v1/fine_tuning/jobs/{fine_tuning_job_id}/resume")
    async def resume(fine_tuning_job_id: str) -> dict[str, Any]:
        job = job_or_404(fine_tuning_job_id)
        if not store.update_job(job["id"], when=("paused",), status="queued", requested=None):
            raise refuse(f"Job {job['id']} is {job['status']}; only a paused job can be resumed.", None, "invalid_job_state")
        store.add_event(job["id"], f"resumed-{job['attempts']}", "The job was resumed; it continues from its checkpoint when a worker is free.")
        return present(job_or_404(job["id"]))

    @app.get("/v1/fine_tuning/jobs/{fine_tuning_job_id}/events")
    async def events(fine_tuning_job_id: str, after: str | None = None, limit: int = Query(20, ge=1, le=10_000)) -> dict[str, Any]:
        job_or_404(fine_tuning_job_id)
        rows, more = store.list_events(fine_tuning_job_id, after, limit)
        return {"object": "list", "data": [present_event(r) for r in rows], "has_more": more}

    @app.get("/v1/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints")
    async def checkpoints(fine_tuning_job_id: str, after: str | None = None, limit: int = Query(10, ge=1, le=1000)) -> dict[str, Any]:
        job_or_404(fine_tuning_job_id)
        rows, more = store.list_checkpoints(fine_tuning_job_id, after, limit)
        return _page(rows, more, present_checkpoint)

    # ------------------------------------------------------------ models

    def cards() -> list[dict[str, Any]]:
        bases = [model_card(name, 0, "tunesmith") for name in catalogue.bases]
        tuned = [model_card(j["fine_tuned_model"], j["finished_at"] or j["created_at"], "user") for j in store.fine_tuned_models() if not j["model_deleted"]]
        return bases + tuned

    def tuned_or_404(model: str) -> dict[str, Any]:
        job = store.job_by_model(model)
        if job is None or job["model_deleted"]:
            raise refuse(f"The model '{model}' does not exist.", "model", "model_not_found", 404)
        return job

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": cards()}

    @app.get("/v1/models/{model:path}")
    async def get_model(model: str) -> dict[str, Any]:
        found = next((c for c in cards() if c["id"] == model), None)
        if found is None:
            raise refuse(f"The model '{model}' does not exist.", "model", "model_not_found", 404)
        return found

    @app.delete("/v1/models/{model:path}")
    async def delete_model(model: str) -> dict[str, Any]:
        if catalogue.base_path(model) is not None:
            raise refuse(f"'{model}' is a base model; only fine-tuned models can be deleted.", "model", "invalid_value")
        job = tuned_or_404(model)
        store.update_job(job["id"], model_deleted=1)  # the run folder stays: `tunesmith runs` still has it
        app.state.forget(model)
        return {"id": model, "object": "model", "deleted": True}

    return app
