"""Run the real CLI entry point in-process and capture what a user would see."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def run_cli(capsys, *args: str) -> CliResult:
    from tunesmith.cli import main

    capsys.readouterr()
    old_argv = sys.argv
    sys.argv = ["tunesmith", *args]
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = old_argv
    captured = capsys.readouterr()
    return CliResult(code, captured.out, captured.err)


SRC = Path(__file__).parents[1] / "src"


def tunesmith(*args: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
    """The CLI in a process of its own, so a test can kill it (TUNESMITH_TEST_KILL_AT, see train/checkpoint.py)."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "TUNESMITH_TEST_KILL_AT": kill_at or ""}
    return subprocess.run([sys.executable, "-m", "tunesmith", *args], env=env, capture_output=True, text=True, timeout=600)


def records(run_dir: Path) -> list[dict]:
    """The run's metrics.jsonl."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
