"""`tunesmith worker`: takes jobs from the queue in api.db and runs each in a process of its own
(through an executor), up to N at once.

A claim is a lease in SQLite that the job's process renews: when a worker, the job's process or the
whole machine dies, the lease runs out and a worker (this one restarted, or another) claims the job
again; its runner then resumes the run from its last checkpoint. Checking a job's files
(validating_files) happens here, before the job waits for a slot in `queued`."""

from __future__ import annotations

import os
import secrets
import socket
import sys
import time
from typing import Any

from tunesmith.api.executor import Executor, LocalExecutor
from tunesmith.api.jobs import check_files
from tunesmith.api.store import ApiStore, now
from tunesmith.errors import UserError
from tunesmith.workspace import Workspace

LEASE_S = float(os.environ.get("TUNESMITH_API_LEASE_S", "30"))
MAX_ATTEMPTS = 5  # a job whose process keeps dying fails instead of looping forever
LOG_LINES_SHOWN = 8


class Worker:
    def __init__(self, workspace: Workspace, executor: Executor, slots: int = 1, poll_s: float = 0.5):
        self.workspace, self.executor, self.slots, self.poll_s = workspace, executor, slots, poll_s
        self.store = ApiStore(workspace)
        self.id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.running: dict[str, str] = {}  # job id -> executor handle

    def run_forever(self, parent_pid: int | None = None) -> None:
        """Until killed, or, for the worker `tunesmith api` starts, until that process is gone: uvicorn
        ends on SIGTERM by raising the signal again, so the API's own clean-up never runs. The jobs'
        processes go on (their runner renews their leases); the next worker adopts them."""
        while parent_pid is None or os.getppid() == parent_pid:
            self.tick()
            time.sleep(self.poll_s)

    def tick(self) -> None:
        self.watch()
        self.validate_one()
        while len(self.running) < self.slots:
            job = self.store.claim(self.id, LEASE_S, ("queued", "running"))
            if job is None:
                break
            self.start(job)

    def validate_one(self) -> None:
        """validating_files -> queued, or failed with OpenAI's error for the file."""
        job = self.store.claim(self.id, LEASE_S, ("validating_files",))
        if job is None:
            return
        try:
            self.store.add_event(job["id"], "validating", f"Validating training file: {job['training_file']}")
            try:
                error, warnings = check_files(self.store, job)
            except Exception as exc:  # noqa: BLE001 - a file the validator cannot read fails the job with the reason
                error, warnings = {"code": "invalid_training_file", "message": f"The training file could not be read: {exc}", "param": "training_file"}, []
            for n, warning in enumerate(warnings):
                self.store.add_event(job["id"], f"file-warning-{n}", warning, level="warn")
            if error is not None:
                if self.store.update_job(job["id"], when=("validating_files",), status="failed", error=error, finished_at=now()):
                    self.store.add_event(job["id"], "failed", error["message"], level="error")
            elif self.store.update_job(job["id"], when=("validating_files",), status="queued"):
                self.store.add_event(job["id"], "queued", "Files validated, moving job to queued state")
        finally:
            self.store.release(job["id"], self.id)

    def start(self, job: dict[str, Any]) -> None:
        env = {**os.environ, "TUNESMITH_HOME": str(self.workspace.home), "TUNESMITH_API_LEASE_OWNER": self.id, "TUNESMITH_API_LEASE_S": str(LEASE_S)}
        handle = self.executor.start(job["id"], [sys.executable, "-m", "tunesmith.api.runner", job["id"]], env)
        self.store.update_job(job["id"], handle=handle)
        self.running[job["id"]] = handle

    def watch(self) -> None:
        """Renew the leases of the jobs running here; settle those whose process ended."""
        for job_id, handle in list(self.running.items()):
            state = self.executor.state(handle)
            if state == "running":
                self.store.renew(job_id, self.id, LEASE_S)
                continue
            del self.running[job_id]
            job = self.store.job(job_id)
            if job is None or job["worker"] != self.id:
                continue  # taken over by another worker
            if job["status"] in ("queued", "running") and (state == "failed" or job["attempts"] >= MAX_ATTEMPTS):
                # the process ended without ending its job: a crash, not a kill (a killed one is resumed below)
                tail = "\n".join(self.executor.logs(handle).strip().splitlines()[-LOG_LINES_SHOWN:])
                error = {"code": "server_error", "message": f"The job's process ended unexpectedly ({state}): {tail}", "param": None}
                self.store.update_job(job_id, status="failed", error=error, finished_at=now())
                self.store.add_event(job_id, "failed", error["message"], level="error")
            self.store.release(job_id, self.id)  # a killed job's lease is free now: the next claim resumes it


def check_executor(name: str) -> None:
    if name not in ("local", "ray"):
        raise UserError(f"unknown executor '{name}'", fix="use --executor local (this machine) or --executor ray (a Ray cluster)")


def executor_for(name: str, **options: Any) -> Executor:
    """ "local" (the default, needs nothing) or "ray" (Ray Jobs; options: address)."""
    check_executor(name)
    if name == "local":
        return LocalExecutor(options["log_dir"])
    from tunesmith.api.ray_executor import RayExecutor  # owned by the ray executor's module; ray is an extra

    return RayExecutor(address=options.get("address"))
