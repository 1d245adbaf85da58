"""Errors a user can act on. The CLI prints them without a traceback and exits 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input or usage: says where (file:line or field) and how to fix it."""

    exit_code = 2

    def __init__(self, message: str, *, where: str | None = None, fix: str | None = None):
        self.where = where
        self.fix = fix
        super().__init__(message)

    def render(self) -> str:
        head = f"{self.where}: {self}" if self.where else str(self)
        return f"{head}\n  fix: {self.fix}" if self.fix else head


class ProblemList(UserError):
    """Several problems found at once, so the user can fix them all in one go."""

    def __init__(self, title: str, problems: list[str], *, fix: str | None = None):
        self.problems = problems
        super().__init__(title + "\n" + "\n".join(f"  - {p}" for p in problems), fix=fix)


class TrainingFailed(UserError):
    """Training went wrong at run time (e.g. diverged): the message names what was kept. Exit 1."""

    exit_code = 1


class ExportMismatch(UserError):
    """An export written whole that does not behave as the run did in tunesmith: the message shows the
    first differing example; export.json keeps the figures. Exit 1."""

    exit_code = 1
