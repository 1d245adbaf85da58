"""Where a job's process runs: on this machine (LocalExecutor, the jobs helper's) or on a Ray cluster
(ray_executor.RayExecutor). The worker builds the command and its environment; an executor only runs it.

(Only the protocol, as INTERFACES.md gives it; the jobs helper's branch holds the rest of this module.)"""

from __future__ import annotations

from typing import Literal, Protocol

State = Literal["running", "succeeded", "failed", "stopped", "unknown"]


class Executor(Protocol):
    name: str

    def start(self, job_id: str, command: list[str], env: dict[str, str]) -> str: ...  # a handle, stored on the job row

    def state(self, handle: str) -> State: ...

    def stop(self, handle: str) -> None: ...  # hard stop; a cancel/pause normally goes through the training control hook

    def logs(self, handle: str) -> str: ...  # the tail of the job process's output, for a failed job's error message
