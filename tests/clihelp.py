"""Run the real CLI entry point in-process and capture what a user would see."""

from __future__ import annotations

import sys
from dataclasses import dataclass


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
