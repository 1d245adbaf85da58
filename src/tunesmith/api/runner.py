"""`python -m tunesmith.api.runner JOB_ID`: one fine-tuning job in its own process, through tunesmith's
Python API (tunesmith.prepare_dataset, train or resume, evaluate), never by reading CLI output.

The job row says what to do: a job whose run exists is resumed from the run's last checkpoint (its
earlier process was killed), otherwise its dataset is prepared and a new run trained. While it
trains, the control hook copies the run's metrics.jsonl into events and checkpoints after every
optimiser step (keyed by step: a step re-run after a resume is not a second event) and stops the run
there when a cancel or pause was requested. The process keeps the job's lease alive; if it dies the
lease runs out and a worker starts the job again."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from tunesmith.api.jobs import checkpoint_model_id, model_id, run_spec
from tunesmith.api.store import ApiStore, now
from tunesmith.errors import UserError
from tunesmith.train.run.guards import Budget, Control
from tunesmith.workspace import Workspace

STOPS = {"cancel": "cancelled by the user", "pause": "paused by the user"}


def main(job_id: str) -> int:
    workspace = Workspace.from_env()
    store = ApiStore(workspace)
    job = store.job(job_id)
    if job is None or job["status"] not in ("queued", "running"):
        return 0  # cancelled or paused while it waited, or finished by an earlier process
    keep_lease(store, job_id, os.environ.get("TUNESMITH_API_LEASE_OWNER", ""), float(os.environ.get("TUNESMITH_API_LEASE_S", "30")))
    if job["requested"] in STOPS:  # asked while no process was running it
        return end(store, job, "cancelled" if job["requested"] == "cancel" else "paused")
    if not store.update_job(job_id, when=("queued", "running"), status="running", started_at=job["started_at"] or time.time()):
        return 0  # cancelled just now
    control = JobControl(store, job_id, workspace)
    try:
        info = train_job(store, job, workspace, control)
    except UserError as exc:
        control.sync()
        return fail(store, job, "training_failed", exc.render().strip())
    except Exception as exc:  # noqa: BLE001 - the job must end failed, with the reason, whatever went wrong
        traceback.print_exc()
        control.sync()
        return fail(store, job, "server_error", f"The job failed because of an internal error: {type(exc).__name__}: {exc}")
    control.sync()
    requested = (store.job(job_id) or {}).get("requested")
    if info.status == "stopped" and requested in STOPS:
        return end(store, job, "cancelled" if requested == "cancel" else "paused", info.stop_reason)
    if info.status == "stopped":
        store.add_event(job_id, f"budget-{control.step}", f"Training stopped by the job's budget: {info.stop_reason}.", level="warn")
    return succeed(store, job, info.run_id, workspace, control)


def train_job(store: ApiStore, job: dict[str, Any], workspace: Workspace, control: JobControl) -> Any:
    """The run's RunInfo once trained: a new run for a new job; the job's own run, continued from its last
    checkpoint, for a job started again."""
    import tunesmith
    from tunesmith.registry.runfolder import load_run_info

    budget = Budget(**job["budget"]) if job["budget"] else None
    run_dir = workspace.run_dir(job["run_id"]) if job["run_id"] else None
    if run_dir is not None and (run_dir / "run.json").is_file():
        info = load_run_info(run_dir)
        if info.status == "completed":  # killed after training, while evaluating or recording
            control.on_start(info.run_id, run_dir)
            return info
        store.add_event(job["id"], f"resume-{job['attempts']}", "Resuming the job from its last checkpoint.")
        return tunesmith.resume(job["run_id"], workspace=workspace, budget=budget, control=control).info
    store.add_event(job["id"], "prepare", "Preparing the training data.")
    dataset = prepare(store, job, workspace)
    spec = run_spec(job, dataset)
    return tunesmith.train(spec, workspace=workspace, budget=budget, control=control).info


def prepare(store: ApiStore, job: dict[str, Any], workspace: Workspace) -> str:
    """The job's files as a dataset named after the job: split by the job's seed, the validation file
    (when given) as its validation split; the test split is what the evaluation scores."""
    import tunesmith

    options: dict[str, Any] = {"pii": "off"}
    if job["validation_file"]:
        options["validation_file"] = str(store.file_path(job["validation_file"]))
    ratios = (0.9, 0.0, 0.1) if job["validation_file"] else (0.8, 0.1, 0.1)
    dataset = tunesmith.prepare_dataset(
        store.file_path(job["training_file"]),
        name=job["id"],
        seed=job["seed"],
        ratios=ratios,
        options=options,
        model=job["spec"]["base"],
        max_seq_len=job["spec"]["max_seq_len"],
        workspace=workspace,
        source=f"fine-tuning job {job['id']}",
    )
    return dataset.name


# ---------------------------------------------------------------- while it trains


class JobControl(Control):
    """The training control hook: the run's records into the job's events and checkpoints after every
    step, and the job row's requested cancel or pause as the reason to stop."""

    def __init__(self, store: ApiStore, job_id: str, workspace: Workspace):
        self.store, self.job_id, self.workspace = store, job_id, workspace
        self.run_dir: Path | None = None
        self.step, self.tokens = 0, 0
        self.copied: set[str] = set()  # event keys this process wrote: each step copies only what is new

    def on_start(self, run_id: str, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.store.update_job(self.job_id, run_id=run_id)
        self.store.add_event(self.job_id, "started", "Fine-tuning job started.")

    def stop_requested(self) -> str | None:
        self.sync()
        job = self.store.job(self.job_id)
        return STOPS.get((job or {}).get("requested") or "")

    def sync(self) -> None:
        """Copy what metrics.jsonl holds now: each step's metrics, validations and run events; checkpoints on disk."""
        if self.run_dir is None or not (self.run_dir / "metrics.jsonl").is_file():
            return
        records = read_records(self.run_dir / "metrics.jsonl")
        total = total_steps(records, self.run_dir)
        steps = [r for r in records if "loss" in r]
        for record in steps:
            step = record["step"]
            data = {"step": step, "train_loss": record["loss"], "total_steps": total, "train_mean_token_accuracy": None}
            self._event(f"step-{step}", f"Step {step}/{total}: training loss={record['loss']:.4f}", type="metrics", data=data)
        for record in records:
            if "val_loss" in record and record["val_loss"] is not None:
                step = record["step"]
                data = {"step": step, "valid_loss": record["val_loss"], "full_valid_loss": record["val_loss"], "total_steps": total}
                self._event(f"valid-{step}", f"Step {step}/{total}: validation loss={record['val_loss']:.4f}", type="metrics", data=data)
            elif "event" in record and record["event"] != "resumed":
                level = "warn" if record["event"] in ("overfitting", "stopped", "diverged") else "info"
                self._event(f"{record['event']}-{record['step']}", record.get("message", record["event"]), level=level)
        if steps:
            if not self.step:
                self._resolved_hyperparameters()
            self.step, self.tokens = steps[-1]["step"], sum(r.get("tokens", 0) for r in steps)
            self._progress(steps, total)
        self._checkpoints(records)

    def _event(self, key: str, message: str, **fields: Any) -> None:
        """A record's event, written once per process; the store's key keeps it once across restarts too."""
        if key not in self.copied:
            self.store.add_event(self.job_id, key, message, **fields)
            self.copied.add(key)

    def _resolved_hyperparameters(self) -> None:
        """As OpenAI does once a job runs: "auto" replaced by the numbers training uses (from the run's resolved config)."""
        from tunesmith.config import DEFAULT_LR
        from tunesmith.registry.runfolder import read_config

        assert self.run_dir is not None
        cfg = read_config(self.run_dir).train
        if not isinstance(cfg.lr, float) or not isinstance(cfg.batch_size, int) or not isinstance(cfg.grad_accum, int):
            return
        hyper = {"n_epochs": cfg.epochs, "batch_size": cfg.batch_size * cfg.grad_accum, "learning_rate_multiplier": round(cfg.lr / DEFAULT_LR[cfg.method], 6)}
        method = {"type": "supervised", "supervised": {"hyperparameters": hyper}}
        self.store.update_job(self.job_id, hyperparameters=hyper, method=method)

    def _progress(self, steps: list[dict[str, Any]], total: int) -> None:
        job = self.store.job(self.job_id) or {}
        last = steps[-1]
        per_step = last.get("elapsed_s", 0) / max(1, last["step"])
        self.store.update_job(
            self.job_id,
            trained_tokens=self.tokens,
            estimated_finish=int(time.time() + per_step * max(0, total - last["step"])),
            first_step_at=job.get("first_step_at") or time.time(),
        )

    def _checkpoints(self, records: list[dict[str, Any]]) -> None:
        assert self.run_dir is not None
        job = self.store.job(self.job_id)
        if job is None:
            return
        folders = sorted((self.run_dir / "checkpoints").glob("step-*/trainer_state.pt"))
        for state in folders:
            step = int(state.parent.name.removeprefix("step-"))
            self.store.add_checkpoint(self.job_id, step, step_metrics(records, step), checkpoint_model_id(fine_tuned_id(job), step))


def fine_tuned_id(job: dict[str, Any]) -> str:
    base = job["model"].split(":")[1] if job["model"].startswith("ft:") else job["model"]
    return model_id(base, job["suffix"], job["id"])


def read_records(path: Path) -> list[dict[str, Any]]:
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:  # the last line of a process killed mid-write
            continue
    return records


def total_steps(records: list[dict[str, Any]], run_dir: Path) -> int:
    """The run's step count, from its resolved config (epochs or max_steps) and how far into an epoch a step is."""
    from tunesmith.registry.runfolder import read_config

    cfg = read_config(run_dir).train
    if cfg.max_steps:
        return cfg.max_steps
    steps = [r for r in records if "loss" in r and r.get("epoch")]
    if not steps or not isinstance(cfg.epochs, int):
        return 0
    last = steps[-1]
    return max(last["step"], round(last["step"] * cfg.epochs / last["epoch"]))


def step_metrics(records: list[dict[str, Any]], step: int) -> dict[str, Any]:
    """OpenAI's checkpoint metrics for a step: its training loss, and the validation done there."""
    train = next((r for r in records if r.get("step") == step and "loss" in r), {})
    valid = next((r for r in records if r.get("step") == step and r.get("val_loss") is not None), {})
    return {
        "step": step,
        "train_loss": train.get("loss"),
        "train_mean_token_accuracy": None,
        "valid_loss": valid.get("val_loss"),
        "valid_mean_token_accuracy": None,
        "full_valid_loss": valid.get("val_loss"),
        "full_valid_mean_token_accuracy": None,
    }


# ---------------------------------------------------------------- how it ends


def succeed(store: ApiStore, job: dict[str, Any], run_id: str, workspace: Workspace, control: JobControl) -> int:
    evaluation = evaluate(store, job, run_id, workspace)
    run_dir = workspace.run_dir(run_id)
    csv_file = store.save_file(io.BytesIO(metrics_csv(read_records(run_dir / "metrics.jsonl")).encode()), "step_metrics.csv", "fine-tune-results", 1 << 30)
    store.update_job(
        job["id"],
        status="succeeded",
        fine_tuned_model=fine_tuned_id(job),
        finished_at=now(),
        result_files=[csv_file["id"]] if csv_file else [],
        evaluation=evaluation,
        trained_tokens=control.tokens or None,
        estimated_finish=None,
        requested=None,
    )
    store.add_event(job["id"], "succeeded", f"The job has successfully completed. New fine-tuned model: {fine_tuned_id(job)}")
    return 0


def evaluate(store: ApiStore, job: dict[str, Any], run_id: str, workspace: Workspace) -> dict[str, Any] | None:
    """Extension: the tuned model against its base on the held-out split; a failed evaluation is a warning, not a failed job."""
    import tunesmith

    settings = job["spec"]["evaluation"]
    if not settings["enabled"]:
        return None
    store.add_event(job["id"], "evaluating", f"Evaluating the fine-tuned model against its base on the {settings['split']} split.")
    try:
        found = tunesmith.evaluate(
            run_id,
            split=settings["split"],
            compare_base=True,
            settings={"limit": settings["limit"], "max_new_tokens": settings["max_new_tokens"]},
            workspace=workspace,
        )
    except Exception as exc:  # noqa: BLE001 - the model is trained; the evaluation's failure is reported beside it
        store.add_event(
            job["id"], "evaluation-failed", f"The evaluation could not run: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", level="warn"
        )
        return None
    evaluation = {"split": found.split, "metrics": found.metrics}
    summary = "; ".join(f"{model}: " + ", ".join(f"{k}={v:.4g}" for k, v in list(m.items())[:4]) for model, m in found.metrics.items())
    store.add_event(job["id"], "evaluated", f"Evaluation on the {found.split} split: {summary}", type="metrics", data=evaluation)
    return evaluation


def metrics_csv(records: list[dict[str, Any]]) -> str:
    """OpenAI's result file: one row per step, validation columns filled where a validation ran."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"])
    valid = {r["step"]: r["val_loss"] for r in records if r.get("val_loss") is not None}
    for record in records:
        if "loss" in record:
            writer.writerow([record["step"], record["loss"], "", valid.get(record["step"], ""), ""])
    return out.getvalue()


def end(store: ApiStore, job: dict[str, Any], status: str, reason: str | None = None) -> int:
    final = status != "paused"
    store.update_job(job["id"], status=status, finished_at=now() if final else None, estimated_finish=None, requested=None)
    text = {"cancelled": "The job was cancelled.", "paused": "The job was paused; its checkpoint is kept. Resume it to continue."}[status]
    store.add_event(job["id"], f"{status}-{job['attempts']}", text + (f" ({reason})" if reason else ""))
    return 0


def fail(store: ApiStore, job: dict[str, Any], code: str, message: str) -> int:
    store.update_job(job["id"], status="failed", error={"code": code, "message": message, "param": None}, finished_at=now(), estimated_finish=None)
    store.add_event(job["id"], "failed", f"The job failed: {message}", level="error")
    return 1


def keep_lease(store: ApiStore, job_id: str, owner: str, lease_s: float) -> None:
    """Renew the job's lease while this process lives; when another worker has taken the job over, leave at once
    (two processes must never train one run)."""

    def beat() -> None:
        while True:
            time.sleep(lease_s / 3)
            if not store.renew(job_id, owner, lease_s):
                job = store.job(job_id)
                if job is not None and job["status"] in ("queued", "running"):
                    os._exit(3)
                return

    threading.Thread(target=beat, daemon=True, name="lease").start()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
