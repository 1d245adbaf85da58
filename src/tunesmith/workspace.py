"""Where tunesmith keeps things: $TUNESMITH_HOME (default ./.tunesmith)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from tunesmith.errors import UserError

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def safe_name(name: str, what: str) -> str:
    """The one rule for dataset and run names, which become folders: no separators, no '..', no hidden
    files, no control characters. fullmatch, not match with '$', which also accepts a trailing newline."""
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name) or ".." in name:
        raise UserError(
            f"{what} {name!r} is not a valid name",
            fix="use letters, digits, '.', '_' and '-' only (no '/', no '..'), at most 128 characters",
        )
    return name


@dataclass(frozen=True)
class Workspace:
    home: Path

    @classmethod
    def from_env(cls, home: str | Path | None = None) -> Workspace:
        root = Path(home or os.environ.get("TUNESMITH_HOME") or ".tunesmith").expanduser().resolve()
        ws = cls(root)
        fix = "set TUNESMITH_HOME to a folder you can write (default: ./.tunesmith)"
        try:
            for sub in (ws.datasets, ws.runs, ws.cache):
                sub.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create the workspace {root} (TUNESMITH_HOME): {exc.strerror or exc}", fix=fix) from None
        if not all(os.access(folder, os.W_OK) for folder in (root, ws.datasets, ws.runs)):
            raise UserError(f"the workspace {root} (TUNESMITH_HOME) is not writable", fix=fix)
        return ws

    @property
    def registry_db(self) -> Path:
        return self.home / "registry.db"

    @property
    def datasets(self) -> Path:
        return self.home / "datasets"

    @property
    def runs(self) -> Path:
        return self.home / "runs"

    @property
    def cache(self) -> Path:
        return self.home / "cache"

    def dataset_dir(self, name: str) -> Path:
        return self.datasets / safe_name(name, "dataset name")

    def run_dir(self, run_id: str) -> Path:
        return self.runs / safe_name(run_id, "run id")


# ---------------------------------------------------------------- who owns a run or a working folder, and is it still alive
#
# A pid alone is not an identity: pids are reused, so a process is named by (host, pid, start time).
# psutil gives the start time on every OS (on Linux it reads /proc/<pid>/stat).

_STAGING = re.compile(r"^\.(?P<label>.+)\.h(?P<host>[0-9a-f]{6})p(?P<pid>\d+)s(?P<start>\d+)\.[^.]+$")


def host_name() -> str:
    import socket

    return socket.gethostname()


def _host_tag(host: str) -> str:
    import hashlib

    return hashlib.sha256(host.encode()).hexdigest()[:6]


def process_start(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch), or None when there is no such process."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.Error:  # e.g. access denied: the process exists
        return 0.0


def process_alive(host: str | None, pid: int | None, started: float | None) -> bool | None:
    """True or False when this machine can tell; None when the owner ran on another host (or is unknown)."""
    if pid is None or (host is not None and host != host_name()):
        return None
    now_started = process_start(pid)
    if now_started is None:
        return False
    # create_time is rounded differently by each read on some systems: one second of slack, pid reuse needs far longer
    return started is None or now_started == 0.0 or abs(now_started - started) < 1.0


def owner() -> dict[str, object]:
    """This process, as run.json records its owner."""
    return {"host": host_name(), "pid": os.getpid(), "started": process_start(os.getpid())}


def staging_dir(parent: Path, label: str) -> Path:
    """A new hidden working folder under `parent` whose name says which process owns it, so that a
    later command can remove it once that process is gone (killed mid-write) and leave it alone while
    it works. `sweep_staging` is the other half."""
    import tempfile

    parent.mkdir(parents=True, exist_ok=True)
    started = int(process_start(os.getpid()) or 0)
    return Path(tempfile.mkdtemp(prefix=f".{label}.h{_host_tag(host_name())}p{os.getpid()}s{started}.", dir=parent))


def sweep_staging(parent: Path) -> list[Path]:
    """Remove the working folders under `parent` whose owning process is gone; say so for each."""
    import shutil

    from tunesmith.ui import console

    removed = []
    here = _host_tag(host_name())
    for child in parent.iterdir() if parent.is_dir() else ():
        match = _STAGING.match(child.name)
        if match is None or match["host"] != here or not child.is_dir():
            continue
        pid, started = int(match["pid"]), int(match["start"])
        now_started = process_start(pid)
        if now_started is not None and (now_started == 0.0 or int(now_started) == started or abs(now_started - started) < 2):
            continue  # its owner is still at work
        shutil.rmtree(child, ignore_errors=True)
        if not child.exists():
            removed.append(child)
            console.print(f"[yellow]removed {child}[/]: left by process {pid}, which ended before it finished")
    return removed
