"""Where tunesmith keeps things: $TUNESMITH_HOME (default ./.tunesmith)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from tunesmith.errors import UserError

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def safe_name(name: str, what: str) -> str:
    """A user-given name that becomes a folder: no separators, no '..', no hidden files."""
    if not _SAFE_NAME.match(name) or ".." in name:
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
        for sub in (ws.datasets, ws.runs, ws.cache):
            sub.mkdir(parents=True, exist_ok=True)
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
