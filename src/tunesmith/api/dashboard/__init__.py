"""The dashboard: the pages of `tunesmith api` at `/` (and `tunesmith ui`), offline (static files shipped
in the package, no CDN), over the same workspace and behind the same key gate as the API.

The static shell (/ and /ui/static/...) holds no data and is open; every data route (/ui/api/...) is
gated like /v1/... The pages act through the API's own routes (files, jobs, cancel/pause/resume, chat
completions); the routes here only gather what the API has no route for: runs trained outside the
service, datasets, evaluations, estimates, alerts. See docs/dashboard.md."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from tunesmith.api.dashboard import alerts, datasets, evaluation, runs
from tunesmith.api.jobs import Catalogue, refuse
from tunesmith.api.store import ApiStore
from tunesmith.errors import UserError
from tunesmith.registry.store import Registry
from tunesmith.workspace import Workspace

STATIC = Path(__file__).parent / "static"
OPEN_PATHS = frozenset({"/", "/favicon.ico"})
OPEN_PREFIXES = ("/ui/static/",)
Auto = Literal["auto"]


class EstimateRequest(BaseModel):
    """What the start-a-job form sends to see the estimate: the job's own fields, and a price."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=256)
    training_file: str | None = Field(None, max_length=128)
    dataset: str | None = Field(None, max_length=128)
    n_epochs: Auto | Annotated[int, Field(ge=1, le=50)] = "auto"
    batch_size: Auto | Annotated[int, Field(ge=1, le=256)] = "auto"
    learning_rate_multiplier: Auto | Annotated[float, Field(gt=0, le=100)] = "auto"
    max_seq_len: int | None = Field(None, ge=16, le=1_000_000)
    price_per_hour: float | None = Field(None, gt=0)


def add_dashboard(app: FastAPI, store: ApiStore, catalogue: Catalogue, workspace: Workspace, max_upload: int) -> None:
    def registry() -> Registry:
        return Registry(workspace.registry_db)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/ui/static", StaticFiles(directory=STATIC), name="dashboard-static")

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return Response(status_code=204)  # browsers ask for one; none is shipped

    @app.get("/ui/api/session")
    async def session() -> dict[str, Any]:
        return {"workspace": workspace.home.name, "bases": list(catalogue.bases)}

    @app.get("/ui/api/runs")
    async def run_table() -> dict[str, Any]:
        return {"data": await run_in_threadpool(runs.run_rows, workspace, store, registry())}

    @app.get("/ui/api/runs/{ref}")
    async def run_page(ref: str) -> dict[str, Any]:
        found = await run_in_threadpool(runs.run_detail, workspace, store, registry(), ref)
        if found is None:
            raise refuse(f"No run or job '{ref[:80]}' in this workspace.", "run", "run_not_found", 404)
        return found

    @app.get("/ui/api/runs/{ref}/evaluation")
    async def evaluation_page(ref: str) -> dict[str, Any]:
        run = registry().run(ref)
        found = await run_in_threadpool(evaluation.evaluation_detail, Path(run["path"])) if run else None
        if found is None:
            raise refuse(f"Run '{ref[:80]}' has no evaluation yet: `tunesmith eval {ref[:80]} --compare-base` makes one.", "run", "evaluation_not_found", 404)
        return found

    @app.get("/ui/api/compare")
    async def compare(run: Annotated[list[str], Query()]) -> dict[str, Any]:
        if not 2 <= len(run) <= 4:
            raise refuse(f"compare takes 2 to 4 runs (got {len(run)}).", "run", "invalid_value")
        return await run_in_threadpool(evaluation.compare_runs, registry(), run)

    @app.get("/ui/api/datasets")
    async def dataset_table() -> dict[str, Any]:
        return {"data": await run_in_threadpool(datasets.dataset_rows, workspace, registry())}

    @app.get("/ui/api/datasets/{name}")
    async def dataset_page(name: str, tokenizer: str | None = None) -> dict[str, Any]:
        reg = registry()
        source = _tokenizer_for(reg, catalogue, name, tokenizer)
        try:
            found = await run_in_threadpool(datasets.dataset_detail, workspace, reg, name, source)
        except UserError as exc:
            raise refuse(exc.render().strip(), "dataset", "dataset_unreadable") from None
        if found is None:
            raise refuse(f"No dataset '{name[:80]}' in this workspace.", "dataset", "dataset_not_found", 404)
        return {**found, "tokenizers": list(catalogue.bases)}

    @app.post("/ui/api/datasets/{name}/files")
    async def dataset_files(name: str) -> dict[str, Any]:
        """A prepared dataset's train (and validation) split as uploaded files, for a job: the jobs API trains on files."""
        row = registry().dataset(name)
        if row is None:
            raise refuse(f"No dataset '{name[:80]}' in this workspace.", "dataset", "dataset_not_found", 404)
        found: dict[str, Any] = {"training_file": None, "validation_file": None}
        for split, key in (("train", "training_file"), ("validation", "validation_file")):
            path = Path(row["path"]) / f"{split}.jsonl"
            if path.is_file() and path.stat().st_size:
                with path.open("rb") as handle:
                    saved = await run_in_threadpool(store.save_file, handle, f"{name}-{split}.jsonl", "fine-tune", max_upload)
                if saved is None:
                    raise refuse(f"The {split} split of '{name}' is larger than this server accepts ({max_upload} bytes).", "dataset", "file_too_large")
                found[key] = saved["id"]
        return found

    # An estimate loads the base model and times real steps: two at once would each measure the other's
    # load (wrong figures) and hold two models in memory, so they wait their turn.
    estimating = threading.Lock()

    def measured(spec: Any) -> Any:
        from tunesmith.train.dry_run import dry_run

        with estimating:
            return dry_run(spec, workspace)

    @app.post("/ui/api/estimate")
    async def estimate(body: EstimateRequest) -> dict[str, Any]:
        spec = _estimate_spec(body, store, catalogue, registry())
        try:
            found = await run_in_threadpool(measured, spec)
        except UserError as exc:
            raise refuse(exc.render().strip(), "training_file" if body.training_file else "dataset", "estimate_failed") from None
        return found.model_dump()

    @app.get("/ui/api/models")
    async def models() -> dict[str, Any]:
        """What the playground can chat with: bases, fine-tuned models and their checkpoints, and registered runs."""
        found = [{"id": name, "kind": "base"} for name in catalogue.bases]
        for job in store.fine_tuned_models():
            if job["model_deleted"]:
                continue
            found.append({"id": job["fine_tuned_model"], "kind": "fine-tuned", "run_id": job["run_id"]})
            checkpoints, _ = store.list_checkpoints(job["id"], None, 1000)
            found += [{"id": c["fine_tuned_model_checkpoint"], "kind": "checkpoint", "run_id": job["run_id"]} for c in checkpoints]
        served = {m.get("run_id") for m in found}
        found += [{"id": r["id"], "kind": "run", "run_id": r["id"]} for r in registry().runs() if r["status"] == "completed" and r["id"] not in served]
        return {"data": found}

    @app.get("/ui/api/alerts")
    async def alert_list(model: str | None = None, since: float | None = None) -> dict[str, Any]:
        return {"data": alerts.read_alerts(workspace.home, model=model, since=since)}


def _tokenizer_for(registry: Registry, catalogue: Catalogue, name: str, asked: str | None) -> str | None:
    """The tokenizer the histogram counts with: a catalogue base named by the page, else the base of the
    latest run on this dataset, else the first base folder the server was started with."""
    if asked is not None:
        found = catalogue.base_path(asked)
        if found is None:
            raise refuse(f"'{asked[:80]}' is not a base model of this server; choose one of: {', '.join(catalogue.bases)}.", "tokenizer", "model_not_found")
        return found
    used = [r for r in registry.runs() if r["dataset"] == name]
    if used:
        path = Path(used[0]["path"]) / "run.json"
        try:
            import json

            return json.loads(path.read_text(encoding="utf-8"))["base_model_path"]
        except (OSError, ValueError, KeyError):
            pass
    folders = [p for n, p in catalogue.bases.items() if n != p]
    return folders[0] if folders else None


def _estimate_spec(body: EstimateRequest, store: ApiStore, catalogue: Catalogue, registry: Registry) -> Any:
    """The RunSpec the job would train with (api.jobs.run_spec, the runner's own), over the file as the runner prepares it."""
    from tunesmith.api.jobs import run_spec
    from tunesmith.config import RunSpec

    base = catalogue.base_path(body.model)
    if base is None:
        raise refuse(f"The model '{body.model[:80]}' cannot be fine-tuned here; choose one of: {', '.join(catalogue.bases)}.", "model", "model_not_found")
    if (body.training_file is None) == (body.dataset is None):
        raise refuse("give either training_file (an uploaded file) or dataset (a prepared dataset's name).", "training_file", "invalid_value")
    if body.training_file is not None:
        if store.file(body.training_file) is None:
            raise refuse(f"invalid file id '{body.training_file[:80]}': no such file.", "training_file", "invalid_file_id")
        data: dict[str, Any] = {"path": str(store.file_path(body.training_file)), "format": None, "prepare": {"pii": "off"}}
    else:
        if registry.dataset(body.dataset or "") is None:
            raise refuse(f"No dataset '{(body.dataset or '')[:80]}' in this workspace.", "dataset", "dataset_not_found")
        data = {"dataset": body.dataset}
    hyper = {"n_epochs": body.n_epochs, "batch_size": body.batch_size, "learning_rate_multiplier": body.learning_rate_multiplier}
    job = {"id": "estimate", "hyperparameters": hyper, "seed": 0, "spec": {"base": base, "from_run": None, "max_seq_len": body.max_seq_len}}
    spec = run_spec(job, "")
    spec["data"] = data
    if body.price_per_hour is not None:
        spec["train"]["price_per_hour"] = body.price_per_hour
    from tunesmith.config import validate_spec

    try:
        return validate_spec(RunSpec, spec, "the estimate request")
    except UserError as exc:
        raise refuse(exc.render().strip(), None, "invalid_value") from None
