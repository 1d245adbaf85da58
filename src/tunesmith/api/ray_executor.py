"""`tunesmith api --executor ray`: each job's process runs on a Ray cluster as a Ray Job (the
cluster's job submission server, `ray.job_submission.JobSubmissionClient`), and its state is read
back from there. docs/ray.md says how to point it at a cluster and what the cluster's nodes need.

A job's Ray submission id is derived from its tunesmith job id, so an API restarted while a job
runs finds it again instead of starting it twice: `start` adopts a submission of that job that is
still pending or running, and only submits anew (`<id>-2`, `-3`, ...) once the earlier ones ended
(a job resumed after a pause, say)."""

from __future__ import annotations

import shlex
from typing import Any

from tunesmith.api.executor import State
from tunesmith.errors import UserError

LOG_TAIL_CHARS = 8000
SUBMISSION_PREFIX = "tunesmith-"
# Ray's JobStatus values, by name; PENDING (waiting for resources or its runtime env) is the protocol's "running".
STATES: dict[str, State] = {"PENDING": "running", "RUNNING": "running", "SUCCEEDED": "succeeded", "FAILED": "failed", "STOPPED": "stopped"}
ADDRESS_FIX = "start one with `ray start --head`, or pass --ray-address http://HEAD:8265 (or set RAY_ADDRESS); docs/ray.md"


class RayExecutor:
    """Jobs run through Ray Jobs. `address`: the cluster's job submission (dashboard) address, e.g.
    http://head:8265; None: Ray's own lookup (RAY_ADDRESS, then a cluster started on this machine).
    `num_cpus`/`num_gpus`: what each job reserves; with none, Ray runs the job's process on the
    head node, and with some it picks a node that has them (and queues the job until one does)."""

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: float | None = None, num_gpus: float | None = None):
        from ray.job_submission import JobSubmissionClient

        self.resources = {key: value for key, value in (("entrypoint_num_cpus", num_cpus), ("entrypoint_num_gpus", num_gpus)) if value}
        try:
            self.client = JobSubmissionClient(address)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = address or "RAY_ADDRESS / a local cluster"
            raise UserError(f"cannot reach a Ray cluster at {where}: {str(exc).splitlines()[0]}", where="--ray-address", fix=ADDRESS_FIX) from None

    def start(self, job_id: str, command: list[str], env: dict[str, str]) -> str:
        entrypoint = shlex.join(command)
        for attempt in range(1, 1000):
            submission = SUBMISSION_PREFIX + job_id + (f"-{attempt}" if attempt > 1 else "")
            status = self._status(submission)
            if status in ("PENDING", "RUNNING"):
                return submission  # this job's process is already on the cluster (the API restarted): not twice
            if status is not None:
                continue  # an earlier run of this job that ended: the next id
            try:
                return self.client.submit_job(
                    entrypoint=entrypoint,
                    submission_id=submission,
                    runtime_env={"env_vars": dict(env)},
                    metadata={"tunesmith_job": job_id},
                    **self.resources,
                )
            except RuntimeError as exc:
                if "already exists" not in str(exc):
                    raise
                # another worker submitted it between our look and our submit: look again
                if self._status(submission) in ("PENDING", "RUNNING"):
                    return submission
        raise RuntimeError(f"job {job_id} was submitted to Ray 999 times; refusing to submit it again")

    def state(self, handle: str) -> State:
        try:
            status = self._status(handle)
        except (ConnectionError, OSError):
            return "unknown"  # the cluster cannot be asked now; the worker asks again later
        return STATES.get(status or "", "unknown")

    def stop(self, handle: str) -> None:
        try:
            self.client.stop_job(handle)
        except RuntimeError as exc:
            if not _not_found(exc):
                raise

    def logs(self, handle: str) -> str:
        """The tail of the job's output, and Ray's own word on why it failed (a runtime env that could
        not be set up fails the job before its command prints anything)."""
        try:
            text = self.client.get_job_logs(handle)
            info = self.client.get_job_info(handle)
        except RuntimeError as exc:
            if _not_found(exc):
                return f"the Ray cluster knows no job {handle}"
            raise
        tail = text[-LOG_TAIL_CHARS:]
        if _name(info.status) == "FAILED" and info.message:
            tail += f"\n[ray] {info.message}"
        return tail

    def _status(self, submission: str) -> str | None:
        """Ray's status name, or None when the cluster has no such job."""
        try:
            return _name(self.client.get_job_status(submission))
        except RuntimeError as exc:
            if _not_found(exc):
                return None
            raise


def _name(status: Any) -> str:
    return str(getattr(status, "value", status))


def _not_found(exc: Exception) -> bool:
    # The client raises RuntimeError("Request failed with status code 404: Job X does not exist.")
    return "status code 404" in str(exc) or "does not exist" in str(exc)
