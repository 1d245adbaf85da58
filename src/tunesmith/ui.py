"""Console output: progress bars and messages go to stderr so stdout stays clean for --json and pipes.

Without a terminal (CI, a log file) rich would draw no bars until the end and fold every line at 80
columns; there, lines are never folded and progress is a plain line every few seconds instead.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

LOG_WIDTH = 200  # tables in a log file: wide enough for ids and numbers on one line
PLAIN_EVERY_S = float(os.environ.get("TUNESMITH_PROGRESS_EVERY_S", "10"))
PLAIN_EVERY_FRACTION = 0.05
# A 5% line waits this long after the previous one: a bootstrap over 2,000 resamples that takes a
# second would otherwise print twenty lines of "0:00 elapsed" into a log.
PLAIN_MIN_GAP_S = float(os.environ.get("TUNESMITH_PROGRESS_MIN_S", "1"))


def _is_terminal(stream: Any) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _console(stderr: bool) -> Console:
    if _is_terminal(sys.stderr if stderr else sys.stdout) or os.environ.get("COLUMNS"):
        return Console(stderr=stderr)
    # soft_wrap: a long message stays one line in the log rather than being folded at 80 columns.
    return Console(stderr=stderr, width=LOG_WIDTH, soft_wrap=True)


console = _console(stderr=True)
# Piped or captured output keeps whole ids and numbers on one line instead of folding them at 80 columns.
out = Console(width=None if sys.stdout.isatty() else LOG_WIDTH)


def progress() -> Progress | PlainProgress:
    if not console.is_terminal:
        return PlainProgress()
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


class _Task:
    def __init__(self, description: str, total: float | None, completed: float, info: str):
        self.description, self.total, self.completed, self.info = description, total, completed, info
        self.started = time.monotonic()
        self.last_line, self.last_fraction = self.started, completed / total if total else 0.0


class PlainProgress:
    """rich.Progress's add_task/update/advance for logs: a line every PLAIN_EVERY_S seconds or every
    5% of the work (whichever comes first, but never two within PLAIN_MIN_GAP_S) and one when a task
    finishes, as it happens."""

    def __init__(self, every_s: float | None = None, every_fraction: float = PLAIN_EVERY_FRACTION):
        self.every_s = PLAIN_EVERY_S if every_s is None else every_s
        self.every_fraction = every_fraction
        self.tasks: list[_Task] = []

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        for task in self.tasks:
            if task.completed != (task.total or 0) and time.monotonic() > task.last_line:
                self._line(task)  # where it stopped (early stopping, a budget, an error)

    def add_task(self, description: str, total: float | None = None, completed: float = 0, info: str = "", **_: Any) -> int:
        self.tasks.append(_Task(description, total, completed, info))
        return len(self.tasks) - 1

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def update(
        self,
        task_id: int,
        *,
        advance: float | None = None,
        completed: float | None = None,
        total: float | None = None,
        info: str | None = None,
        description: str | None = None,
        **_: Any,
    ) -> None:
        task = self.tasks[task_id]
        task.total = task.total if total is None else total
        task.description = task.description if description is None else description
        task.info = task.info if info is None else info
        if completed is not None:
            task.completed = completed
        if advance:
            task.completed += advance
        now = time.monotonic()
        fraction = task.completed / task.total if task.total else 0.0
        finished = bool(task.total) and task.completed >= task.total
        since = now - task.last_line
        step_done = fraction - task.last_fraction >= self.every_fraction - 1e-9 and since >= PLAIN_MIN_GAP_S
        if (advance or completed is not None) and (finished or since >= self.every_s or step_done):
            self._line(task)
            task.last_line, task.last_fraction = now, fraction

    def _line(self, task: _Task) -> None:
        elapsed = time.monotonic() - task.started
        if task.total:
            share = task.completed / task.total
            left = elapsed / share * (1 - share) if share > 0 else None
            where = f"{task.completed:g}/{task.total:g} ({share:.0%})"
            eta = f", about {_clock(left)} left" if left is not None and share < 1 else ""
        else:
            where, eta = f"{task.completed:g}", ""
        info = f" {task.info}" if task.info else ""
        console.print(f"{task.description}: {where}{info}, {_clock(elapsed)} elapsed{eta}", markup=False, highlight=False)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"
