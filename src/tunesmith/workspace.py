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
    def from_env(cls, home: str | Path | None = None) -> "Workspace":
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
