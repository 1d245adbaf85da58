"""A live `tunesmith api` for tests: a real process on a free 127.0.0.1 port with its worker, the tiny
model as its base (named by its folder's name), and the official openai client pointed at it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from conftest import tiny_records

LEASE_S = "3"  # a dead job's lease runs out fast, so a killed job is taken up again within seconds


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Api:
    home: Path
    port: int
    process: subprocess.Popen
    base: str  # the tiny model's name in the catalogue

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def client(self, **options):
        from openai import OpenAI

        return OpenAI(base_url=self.url, api_key=options.pop("api_key", "unused"), **options)

    def kill(self) -> None:
        """SIGKILL the API process and its worker (their process group), as a power cut would."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()


def start_api(home: Path, tiny_model: Path, *args: str, env: dict[str, str] | None = None, port: int | None = None, command_name: str = "api") -> Api:
    """`command_name` "ui" starts the same service as `tunesmith ui` (the dashboard's name for it)."""
    port = port or free_port()
    environment = {**os.environ, "TUNESMITH_HOME": str(home), "TUNESMITH_API_LEASE_S": LEASE_S, **(env or {})}
    command = [sys.executable, "-m", "tunesmith", command_name, "--port", str(port), "--base-model", str(tiny_model), *args]
    log = (home.parent / f"api-{port}.log").open("ab")
    process = subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    api = Api(home, port, process, tiny_model.name)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"tunesmith {command_name} exited with {process.returncode}: {(home.parent / f'api-{port}.log').read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as answer:
                if json.loads(answer.read())["status"] == "ok":
                    return api
        except OSError:
            time.sleep(0.2)
    api.kill()
    raise AssertionError("tunesmith api did not answer /health within 60 s")


@contextmanager
def running_api(home: Path, tiny_model: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[Api]:
    api = start_api(home, tiny_model, *args, env=env)
    try:
        yield api
    finally:
        api.kill()


def training_file(folder: Path, n: int = 30, name: str = "train.jsonl") -> Path:
    path = folder / name
    path.write_text("".join(json.dumps(r) + "\n" for r in tiny_records(n)), encoding="utf-8")
    return path


def wait_for(client, job_id: str, statuses: set[str], timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} still {job.status} after {timeout} s (wanted {statuses}); error: {job.error}")


def all_events(client, job_id: str) -> list:
    """Every event of the job, oldest first, read through the client's own pagination."""
    return list(reversed(list(client.fine_tuning.jobs.list_events(job_id, limit=5))))
