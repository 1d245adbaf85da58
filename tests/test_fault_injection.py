"""Kill the long commands (prepare, train, resume, eval) with SIGKILL at random moments, many times,
and after each kill check that the workspace is consistent: no run is listed as running once its
process is gone, everything listed can be read, no working folder survives the next command, and
the next command (prepare again, resume, eval) works."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from clihelp import SRC, run_cli
from conftest import run_id_from

from tunesmith.data.dataset import load_dataset
from tunesmith.registry.runfolder import load_run_info, run_status
from tunesmith.registry.store import Registry
from tunesmith.workspace import Workspace

pytestmark = pytest.mark.slow  # ten SIGKILLs of real CLI processes and their recoveries: a few minutes on 2 cores

KILLS = 10


def killed_at_random(rng: random.Random, args: list[str], within: tuple[float, float]) -> tuple[float, bool]:
    """Start the CLI, SIGKILL it after a random delay; (delay, whether it was still running)."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "TUNESMITH_TEST_KILL_AT": ""}
    process = subprocess.Popen([sys.executable, "-m", "tunesmith", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    delay = rng.uniform(*within)  # the CLI takes seconds to import torch: kills land in loading, the work and the writes alike
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    alive = process.poll() is None
    if alive:
        process.send_signal(signal.SIGKILL)
    process.wait()
    return delay, alive


def check_consistent(capsys, home: Path) -> dict[str, dict]:
    """What a user reads after a crash is true and readable. Returns the registry's runs by id."""
    listed = run_cli(capsys, "runs", "list")
    assert listed.code == 0, listed.err
    assert "not in the registry" not in listed.err  # every finished folder is indexed
    ws = Workspace.from_env(home)
    registry = Registry(ws.registry_db)
    runs = {r["id"]: r for r in registry.runs()}
    for run_id, row in runs.items():
        # As `runs list` reads it: a process killed after run.json said how the run ended but before the
        # registry heard it leaves the registry saying running; the folder is the truth then.
        status, _ = run_status(ws.run_dir(run_id), row["status"], row["owner"])
        assert status != "running", f"{run_id} is listed as running but no process trains it"
        assert status in listed.out.split(run_id, 1)[1].splitlines()[0], (run_id, status)
        if (ws.run_dir(run_id) / "run.json").exists():
            info = load_run_info(ws.run_dir(run_id))
            if info.status == "completed":
                assert (ws.run_dir(run_id) / info.artefact / "config.json").is_file() or any((ws.run_dir(run_id) / info.artefact).glob("*.safetensors"))
    for manifest in (home / "datasets").glob("*/manifest.json"):
        dataset = load_dataset(ws, manifest.parent.name)
        assert sum(len(examples) for examples in dataset.splits.values()) == sum(dataset.manifest.counts.values())
        assert registry.dataset(dataset.name) is not None
    return runs


def test_random_kills_leave_a_consistent_workspace_and_the_next_command_works(capsys, home, tiny_model, tickets_file):
    rng = random.Random(23)
    train_args = ["train", "--model", str(tiny_model), "--data", "tickets", "--epochs", "3", "--batch-size", "4", "--lr", "0.03"]
    assert run_cli(capsys, "data", "prepare", str(tickets_file), "--out", "tickets", "--pii", "off").code == 0
    done = run_cli(capsys, *train_args[:-4], "--max-steps", "4", "--batch-size", "4")
    assert done.code == 0, done.err
    evaluated = run_id_from(done.out)

    log = []
    for round_ in range(KILLS):
        kind = ("prepare", "train", "eval")[round_ % 3]
        before = {p.name for p in (home / "runs").iterdir()}
        if kind == "prepare":
            delay, alive = killed_at_random(rng, ["data", "prepare", str(tickets_file), "--out", f"again-{round_}"], (2.0, 9.0))
        elif kind == "train":
            delay, alive = killed_at_random(rng, train_args, (6.0, 24.0))
        else:
            delay, alive = killed_at_random(rng, ["eval", evaluated, "--compare-base", "--limit", "6", "--max-new-tokens", "8"], (4.0, 14.0))
        left = [p.name.split(".")[1] for p in (home / "datasets").iterdir() if p.name.startswith(".")]
        log.append((kind, round(delay, 1), "killed" if alive else "finished first", *(f"left {', '.join(left)}" for _ in left[:1])))
        runs = check_consistent(capsys, home)

        # the next command works, and sweeps what the killed one left
        if kind == "prepare":
            again = run_cli(capsys, "data", "prepare", str(tickets_file), "--out", f"again-{round_}", "--pii", "off")
            assert again.code == 0, (log, again.err)
            assert not [p for p in (home / "datasets").iterdir() if p.name.startswith(".")], log
        elif kind == "train":
            new = {p.name for p in (home / "runs").iterdir()} - before
            for run_id in new:
                if not (home / "runs" / run_id / "run.json").exists():
                    log[-1] += ("a run folder without run.json (killed while loading the model)",)
                left = run_status(home / "runs" / run_id, runs[run_id]["status"], runs[run_id]["owner"])[0] if run_id in runs else None
                if left is not None and (home / "runs" / run_id / "run.json").exists() and left != "completed":
                    log[-1] += (f"resumed a run left {left}",)
                    resumed = run_cli(capsys, "train", "--resume", run_id)
                    assert resumed.code == 0, (log, resumed.err)
                    assert json.loads((home / "runs" / run_id / "run.json").read_text())["status"] == "completed"
        else:
            again = run_cli(capsys, "eval", evaluated, "--compare-base", "--limit", "6", "--max-new-tokens", "8")
            assert again.code == 0, (log, again.err)
        check_consistent(capsys, home)
    print("kills:", log)
    assert sum(1 for entry in log if entry[2] == "killed") >= KILLS // 2, log  # most kills landed mid-command
