"""Fine-tuning jobs as OpenAI defines them, over tunesmith's training: the create request (OpenAI's
fields and this service's extensions), the base models a job may name, the job's RunSpec, the check
of its files at `validating_files` (OpenAI's error codes), and the job as the client reads it.

States: validating_files -> queued -> running -> succeeded | failed | cancelled; a pause takes a
running job to paused (its checkpoint kept) and a resume back to queued."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tunesmith.api.store import ApiStore, new_id, now
from tunesmith.config import EMBEDDED_MODEL
from tunesmith.serve.protocol import ServeError

MIN_EXAMPLES = 10  # OpenAI's minimum for a training file
Auto = Literal["auto"]


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_epochs: Auto | Annotated[int, Field(ge=1, le=50)] | None = None
    batch_size: Auto | Annotated[int, Field(ge=1, le=256)] | None = None
    learning_rate_multiplier: Auto | Annotated[float, Field(gt=0, le=100, allow_inf_nan=False)] | None = None


class Supervised(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hyperparameters: Hyperparameters | None = None


class Method(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str
    supervised: Supervised | None = None
    dpo: dict[str, Any] | None = None
    reinforcement: dict[str, Any] | None = None


class JobBudget(BaseModel):
    """Extension: training stops, checkpointed, when another step would pass the time or the cost."""

    model_config = ConfigDict(extra="forbid")

    max_seconds: float | None = Field(None, gt=0, allow_inf_nan=False)
    max_cost: float | None = Field(None, gt=0, allow_inf_nan=False)
    price_per_hour: float | None = Field(None, gt=0, allow_inf_nan=False)


class JobEvaluation(BaseModel):
    """Extension: after training, the tuned model and its base scored on the held-out split."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    split: Literal["validation", "test"] = "test"
    limit: int = Field(50, ge=1, le=10_000)
    max_new_tokens: int = Field(64, ge=1, le=4096)


class CreateJob(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=256)
    training_file: str = Field(min_length=1, max_length=128)
    validation_file: str | None = Field(None, max_length=128)
    suffix: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    metadata: dict[str, str] | None = None
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    integrations: list[Any] | None = None
    # extensions (docs/api.md)
    budget: JobBudget | None = None
    evaluation: JobEvaluation | None = None
    max_seq_len: int | None = Field(None, ge=16, le=1_000_000)


# ---------------------------------------------------------------- base models and fine-tuned model ids


class Catalogue:
    """The base models jobs may name: the embedded model, and the folders the server was started with
    (`--base-model DIR`), each by its folder's name. A client names a model; it never sends a path."""

    def __init__(self, folders: list[Path] | None = None):
        self.bases: dict[str, str] = {EMBEDDED_MODEL: EMBEDDED_MODEL}
        for folder in folders or []:
            self.bases[Path(folder).name] = str(Path(folder).resolve())

    def base_path(self, name: str) -> str | None:
        return self.bases.get(name)


def model_id(base: str, suffix: str | None, job_id: str) -> str:
    """OpenAI's form: ft:<base>:<suffix or organisation>:<job id tail>."""
    return f"ft:{base}:{suffix or 'tunesmith'}:{job_id.removeprefix('ftjob-')[:8]}"


def checkpoint_model_id(fine_tuned: str, step: int) -> str:
    return f"{fine_tuned}:ckpt-step-{step}"


# ---------------------------------------------------------------- create


def refuse(message: str, param: str | None, code: str, status: int = 400) -> ServeError:
    return ServeError(status, message, param=param, code=code)


def create_job(store: ApiStore, catalogue: Catalogue, req: CreateJob) -> dict[str, Any]:
    """Check the request (a 400 naming the parameter), then record the job in validating_files; the
    worker checks its files and queues it."""
    hyper = _hyperparameters(req)
    if req.integrations:
        raise refuse("integrations are not supported by this server; leave 'integrations' unset.", "integrations", "unsupported_parameter")
    _check_metadata(req.metadata)
    for param in ("training_file", "validation_file"):
        file_id = getattr(req, param)
        found = None if file_id is None else store.file(file_id)
        if file_id is not None and found is None:
            raise refuse(f"invalid file id '{file_id}': no such file. Upload it with files.create(purpose='fine-tune').", param, "invalid_file_id")
        if found is not None and found["purpose"] != "fine-tune":
            raise refuse(
                f"file '{file_id}' has purpose '{found['purpose']}'; fine-tuning reads files uploaded with purpose 'fine-tune'.", param, "invalid_file_purpose"
            )
    base, parent = _base_of(store, catalogue, req.model)
    if req.budget is not None and req.budget.max_cost is not None and req.budget.price_per_hour is None:
        raise refuse("budget.max_cost needs budget.price_per_hour to turn time into money.", "budget.price_per_hour", "missing_required_parameter")
    job_id = new_id("ftjob")
    method = {"type": "supervised", "supervised": {"hyperparameters": hyper}}
    job = {
        "id": job_id,
        "created_at": now(),
        "model": req.model,
        "training_file": req.training_file,
        "validation_file": req.validation_file,
        "suffix": req.suffix,
        "seed": req.seed if req.seed is not None else int.from_bytes(job_id.encode()[-4:], "big") % 2**31,
        "metadata": req.metadata,
        "hyperparameters": hyper,
        "method": method,
        "budget": _budget(req).model_dump(exclude_none=True) if _budget(req) else None,
        "status": "validating_files",
        "spec": {
            "base": base,
            "from_run": parent,
            "max_seq_len": req.max_seq_len,
            "evaluation": (req.evaluation or JobEvaluation()).model_dump(),
        },
    }
    return store.add_job(job)


def _hyperparameters(req: CreateJob) -> dict[str, Any]:
    if req.method is not None:
        if req.method.type != "supervised":
            raise refuse(f"method '{req.method.type}' is not supported by this server; use method type 'supervised'.", "method.type", "unsupported_method")
        if req.hyperparameters is not None:
            raise refuse("give the hyperparameters in method.supervised.hyperparameters or in hyperparameters, not both.", "hyperparameters", "invalid_value")
        given = req.method.supervised.hyperparameters if req.method.supervised else None
    else:
        given = req.hyperparameters
    values = (given or Hyperparameters()).model_dump()
    return {k: ("auto" if v is None else v) for k, v in values.items()}


def _check_metadata(metadata: dict[str, str] | None) -> None:
    if metadata is None:
        return
    if len(metadata) > 16:
        raise refuse("metadata holds at most 16 pairs.", "metadata", "invalid_value")
    for key, value in metadata.items():
        if not key or len(key) > 64 or len(value) > 512:
            raise refuse(f"metadata key '{key[:64]}': keys are 1-64 characters, values at most 512.", "metadata", "invalid_value")


BUDGET_KEYS = {"budget_max_seconds": "max_seconds", "budget_max_cost": "max_cost", "budget_price_per_hour": "price_per_hour"}


def _budget(req: CreateJob) -> JobBudget | None:
    """The extension field, or the same limits as metadata strings (budget_max_seconds, ...), for clients
    that cannot send extra fields."""
    if req.budget is not None:
        return req.budget
    given = {field: (req.metadata or {}).get(key) for key, field in BUDGET_KEYS.items()}
    if not any(v is not None for v in given.values()):
        return None
    values: dict[str, float] = {}
    for key, field in BUDGET_KEYS.items():
        text = given[field]
        if text is None:
            continue
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if not (math.isfinite(number) and number > 0):
            raise refuse(f"metadata.{key} must be a number above 0 (got '{text}').", f"metadata.{key}", "invalid_value")
        values[field] = number
    if "max_cost" in values and "price_per_hour" not in values:
        raise refuse("metadata.budget_max_cost needs metadata.budget_price_per_hour.", "metadata.budget_price_per_hour", "missing_required_parameter")
    return JobBudget(**values)


def _base_of(store: ApiStore, catalogue: Catalogue, name: str) -> tuple[str, str | None]:
    """(the base model's path or name, the run continued when `name` is a fine-tuned model)."""
    if name.startswith("ft:"):
        from tunesmith.config import ModelSpec

        if "from_run" not in ModelSpec.model_fields:
            raise refuse("continuing a fine-tuned model is not available in this version; name a base model.", "model", "unsupported_model")
        parent = store.job_by_model(name)
        if parent is None or parent.get("model_deleted"):
            raise refuse(f"The model '{name}' does not exist.", "model", "model_not_found")
        return parent["spec"]["base"], parent["run_id"]
    base = catalogue.base_path(name)
    if base is None:
        raise refuse(
            f"The model '{name}' does not exist or cannot be fine-tuned here; choose one of: {', '.join(catalogue.bases)}.", "model", "model_not_found"
        )
    return base, None


# ---------------------------------------------------------------- validating_files


def check_files(store: ApiStore, job: dict[str, Any]) -> tuple[dict[str, Any] | None, list[str]]:
    """The job's files read by tunesmith's validator: (OpenAI's error for a bad file or None, warnings)."""
    from tunesmith.data.validate import load_tokenizer_only, validate_file

    tokenizer = load_tokenizer_only(job["spec"]["base"])
    warnings: list[str] = []
    for param in ("training_file", "validation_file"):
        file_id = job[param]
        if file_id is None:
            continue
        if store.file(file_id) is None:
            return {"code": "invalid_file_id", "message": f"The file {file_id} was deleted before the job could read it.", "param": param}, warnings
        report = validate_file(store.file_path(file_id), tokenizer=tokenizer, max_seq_len=job["spec"]["max_seq_len"])
        kind = "training" if param == "training_file" else "validation"
        too_long = [p for p in report.warnings if p.code in ("too_long", "no_trainable_tokens") and "max_seq_len" in p.message]
        if not report.ok:
            first = report.errors[0]
            where = f"line {first.line}" if first.line else "the file"
            more = f" ({report.n_errors - 1} more problem(s) on other lines)" if report.n_errors > 1 else ""
            message = f"The job failed due to an invalid {kind} file. Invalid file format: {where}: {first.message} [{first.code}]{more}."
            return {"code": f"invalid_{kind}_file", "message": message, "param": param}, warnings
        if too_long:
            first = too_long[0]
            message = (
                f"The job failed due to an invalid {kind} file. Example on line {first.line} is too long: {first.message} "
                f"({len(too_long)} example(s) in all). Send max_seq_len with the job to raise the limit."
            )
            return {"code": "exceeded_max_tokens", "message": message, "param": param}, warnings
        if param == "training_file" and report.examples < MIN_EXAMPLES:
            message = f"Training file has {report.examples} example(s), but must have at least {MIN_EXAMPLES} examples."
            return {"code": "invalid_n_examples", "message": message, "param": param}, warnings
        warnings += [f"{kind} file line {p.line}: {p.message}" for p in report.warnings[:5]]
    return None, warnings


# ---------------------------------------------------------------- the RunSpec


def run_spec(job: dict[str, Any], dataset: str) -> dict[str, Any]:
    """The run config a job trains with: OpenAI's "auto" is tunesmith's auto rule (docs/training.md)."""
    hyper = job["hyperparameters"]
    lrm = hyper["learning_rate_multiplier"]
    train: dict[str, Any] = {
        "epochs": hyper["n_epochs"],
        "batch_size": hyper["batch_size"],
        "seed": job["seed"],
        **({"lr": "auto"} if lrm == "auto" else {"lr_multiplier": lrm}),
        **({"max_seq_len": job["spec"]["max_seq_len"]} if job["spec"]["max_seq_len"] else {}),
    }
    if hyper["batch_size"] == "auto":
        train["grad_accum"] = "auto"
    model: dict[str, Any] = {"from_run": job["spec"]["from_run"]} if job["spec"]["from_run"] else {"name": job["spec"]["base"]}
    return {"name": job["id"], "model": model, "data": {"dataset": dataset}, "train": train}


# ---------------------------------------------------------------- the job as the client reads it


def present(job: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's FineTuningJob, plus the extensions `budget`, `evaluation` and `run_id`."""
    return {
        "object": "fine_tuning.job",
        "id": job["id"],
        "created_at": job["created_at"],
        "error": job["error"],
        "fine_tuned_model": job["fine_tuned_model"],
        "finished_at": job["finished_at"],
        "hyperparameters": job["hyperparameters"],
        "model": job["model"],
        "organization_id": "org-tunesmith",
        "result_files": job["result_files"],
        "seed": job["seed"],
        "status": job["status"],
        "trained_tokens": job["trained_tokens"],
        "training_file": job["training_file"],
        "validation_file": job["validation_file"],
        "estimated_finish": job["estimated_finish"] if job["status"] == "running" else None,
        "integrations": [],
        "metadata": job["metadata"],
        "method": job["method"],
        "user_provided_suffix": job["suffix"],
        "budget": job["budget"],
        "evaluation": job["evaluation"],
        "run_id": job["run_id"],
    }


def present_event(event: dict[str, Any]) -> dict[str, Any]:
    found = {k: event[k] for k in ("id", "created_at", "level", "message", "type", "data")}
    return {"object": "fine_tuning.job.event", **found}


def present_checkpoint(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "object": "fine_tuning.job.checkpoint",
        "id": row["id"],
        "created_at": row["created_at"],
        "fine_tuned_model_checkpoint": row["fine_tuned_model_checkpoint"],
        "fine_tuning_job_id": row["job_id"],
        "metrics": row["metrics"],
        "step_number": row["step"],
    }
