"""Where a job's process runs: the Executor protocol and the local executor (a child process on this
machine). The worker builds the command (`python -m tunesmith.api.runner JOB_ID`) and its environment;
an executor only starts, watches and stops it. `--executor ray` hands it to Ray Jobs instead
(ray_executor.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Literal, Protocol

from tunesmith.workspace import process_alive, process_start

State = Literal["running", "succeeded", "failed", "stopped", "unknown"]
LOG_TAIL_BYTES = 4000


class Executor(Protocol):
    name: str

    def start(self, job_id: str, command: list[str], env: dict[str, str]) -> str: ...  # a handle, stored on the job row

    def state(self, handle: str) -> State: ...

    def stop(self, handle: str) -> None: ...  # hard stop; cancel and pause go through the training control hook

    def logs(self, handle: str) -> str: ...  # the tail of the job process's output, for a failed job's error message


class LocalExecutor:
    """Each job a child process in a session of its own (a Ctrl-C meant for the server does not reach
    it), its output in <log_dir>/<job id>.log. The handle is JSON {pid, log}: a worker started again
    after a crash can still watch and read the process its predecessor started."""

    name = "local"

    def __init__(self, log_dir: Path):
        self.log_dir = Path(log_dir)
        self.children: dict[int, subprocess.Popen] = {}

    def start(self, job_id: str, command: list[str], env: dict[str, str]) -> str:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{job_id}.log"
        with log.open("ab") as out:
            child = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.children[child.pid] = child
        # the start time names the process: after a restart a recycled pid must not pass for the job
        return json.dumps({"pid": child.pid, "started": process_start(child.pid), "log": str(log)})

    def state(self, handle: str) -> State:
        found = json.loads(handle)
        pid = found["pid"]
        child = self.children.get(pid)
        if child is None:  # started by an earlier worker process: alive or not is all that can be known
            return "running" if process_alive(None, pid, found.get("started")) else "unknown"
        code = child.poll()
        if code is None:
            return "running"
        self.children.pop(pid, None)
        return "succeeded" if code == 0 else "stopped" if code < 0 else "failed"

    def stop(self, handle: str) -> None:
        pid = json.loads(handle)["pid"]
        try:
            os.killpg(pid, signal.SIGKILL)  # its own session: the group is the job's process and anything it started
        except (ProcessLookupError, PermissionError):
            pass
        child = self.children.pop(pid, None)
        if child is not None:
            child.wait()

    def logs(self, handle: str) -> str:
        log = Path(json.loads(handle)["log"])
        try:
            with log.open("rb") as source:
                source.seek(max(0, log.stat().st_size - LOG_TAIL_BYTES))
                return source.read().decode("utf-8", "replace")
        except OSError:
            return ""
