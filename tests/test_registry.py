"""The registry is an index of the run and dataset folders: damaged, emptied or deleted, it never
breaks a command with a traceback nor hides a run, and `tunesmith runs reindex` rebuilds it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from clihelp import run_cli
from conftest import run_id_from

from tunesmith.registry.store import Registry


def squash(text: str) -> str:
    return "".join(text.split())  # the terminal wraps long lines, inside paths too


@pytest.fixture()
def evaluated_run(capsys, home, tiny_model, tickets_file) -> str:
    assert run_cli(capsys, "data", "prepare", str(tickets_file), "--out", "tickets", "--pii", "off").code == 0
    trained = run_cli(capsys, "train", "--model", str(tiny_model), "--data", "tickets", "--max-steps", "4", "--batch-size", "4", "--lr", "0.03")
    assert trained.code == 0, trained.err
    run_id = run_id_from(trained.out)
    evaluated = run_cli(capsys, "eval", run_id, "--compare-base", "--limit", "4", "--max-new-tokens", "8", "--no-perplexity")
    assert evaluated.code == 0, evaluated.err
    return run_id


def shown(capsys, run_id: str) -> list[str]:
    """`runs show` without its two timestamps (rebuilt from file times, to the second)."""
    result = run_cli(capsys, "runs", "show", run_id)
    assert result.code == 0, result.err
    return [line for line in result.out.splitlines() if not line.startswith(("created:", "finished:"))]


def folders(home: Path) -> set[str]:
    return {str(p.relative_to(home)) for p in home.glob("*/*")}


def test_a_damaged_registry_stops_every_command_with_the_fix_and_reindex_restores_it(capsys, home, tiny_model, tickets_file, evaluated_run):
    listed, details = run_cli(capsys, "runs", "list").out, shown(capsys, evaluated_run)
    assert "completed" in listed and "tuned" in "".join(details)
    db = home / "registry.db"
    damaged = bytearray(db.read_bytes())
    damaged[:4096] = b"this is not SQLite " * 215 + b"xxx"  # the header page overwritten: what a bad copy or a disk error leaves
    db.write_bytes(bytes(damaged))
    before = folders(home)

    commands = [
        ("runs", "list"),
        ("runs", "show", evaluated_run),
        ("data", "prepare", str(tickets_file), "--out", "again", "--pii", "off"),
        ("train", "--model", str(tiny_model), "--data", "tickets", "--max-steps", "2"),
    ]
    for args in commands:
        result = run_cli(capsys, *args)
        assert result.code == 2, (args, result.err)
        assert squash(f"the registry {db} is damaged") in squash(result.err) and "tunesmith runs reindex" in result.err, args
        assert "Traceback" not in result.err
    assert folders(home) == before  # nothing was written before the registry was found damaged

    rebuilt = run_cli(capsys, "runs", "reindex")
    assert rebuilt.code == 0, rebuilt.err
    assert "1 runs, 1 datasets, 2 evaluations" in rebuilt.out and "registry.db.damaged-" in squash(rebuilt.err)
    assert len(list(home.glob("registry.db.damaged-*"))) == 1  # the damaged file is kept, not deleted
    assert run_cli(capsys, "runs", "list").out == listed
    assert shown(capsys, evaluated_run) == details


def test_an_emptied_registry_says_so_and_reindex_restores_it(capsys, home, evaluated_run):
    listed, details = run_cli(capsys, "runs", "list").out, shown(capsys, evaluated_run)
    with sqlite3.connect(home / "registry.db") as db:
        for table in ("runs", "datasets", "evaluations"):
            db.execute(f"DELETE FROM {table}")

    empty = run_cli(capsys, "runs", "list")
    assert empty.code == 0 and evaluated_run not in empty.out
    message = " ".join(empty.err.split())
    assert f"1 run folder ({evaluated_run}) and 1 dataset folder (tickets)" in message and "`tunesmith runs reindex` adds them" in message
    missing = run_cli(capsys, "runs", "show", evaluated_run)
    assert missing.code == 2 and "tunesmith runs reindex" in missing.err

    assert run_cli(capsys, "runs", "reindex").code == 0
    again = run_cli(capsys, "runs", "list")
    assert again.out == listed and "not in the registry" not in again.err
    assert shown(capsys, evaluated_run) == details
    assert Registry(home / "registry.db").dataset("tickets")["version"]


def test_a_deleted_registry_is_rebuilt_from_the_folders_and_says_so(capsys, home, evaluated_run):
    listed = run_cli(capsys, "runs", "list").out
    (home / "registry.db").unlink()
    again = run_cli(capsys, "runs", "list")
    assert again.code == 0 and again.out == listed
    assert "was missing" in again.err and "rebuilt it from the folders (1 runs, 1 datasets)" in " ".join(again.err.split())


def test_a_dataset_folder_without_its_row_is_registered_again(capsys, home, tickets_file):
    """`data prepare` killed between writing the folder and registering it: the folder is the truth."""
    assert run_cli(capsys, "data", "prepare", str(tickets_file), "--out", "tickets", "--pii", "off").code == 0
    with sqlite3.connect(home / "registry.db") as db:
        db.execute("DELETE FROM datasets")
    assert "1 dataset folder (tickets)" in " ".join(run_cli(capsys, "runs", "list").err.split())
    assert run_cli(capsys, "runs", "reindex").code == 0
    assert Registry(home / "registry.db").dataset("tickets")["path"] == str(home / "datasets" / "tickets")
    with sqlite3.connect(home / "registry.db") as db:
        db.execute("DELETE FROM datasets")
    assert run_cli(capsys, "data", "prepare", str(tickets_file), "--out", "tickets", "--pii", "off").code == 0  # the same content again
    assert Registry(home / "registry.db").dataset("tickets") is not None
