"""A run's status is true: `running` only while its process runs. A killed training is listed as
interrupted and resumes; a full disk mid-checkpoint fails the run with one line, removes the half
checkpoint and leaves the run resumable."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from clihelp import run_cli, tunesmith
from conftest import only_run

from tunesmith.registry.store import Registry

TRAIN = ("--epochs", "1", "--batch-size", "4", "--lr", "0.03")


def prepared(capsys, tickets_file: Path) -> None:
    assert run_cli(capsys, "data", "prepare", str(tickets_file), "--out", "tickets", "--pii", "off").code == 0


def squash(text: str) -> str:
    return "".join(text.split())


def test_a_killed_training_is_listed_as_interrupted_and_resumes(capsys, home, tiny_model, tickets_file):
    prepared(capsys, tickets_file)
    killed = tunesmith("train", "--model", str(tiny_model), "--data", "tickets", *TRAIN, kill_at="step:8")  # SIGKILL inside step 8
    assert killed.returncode == -9
    run_dir = only_run(home)
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running"  # what the killed process left

    listed = run_cli(capsys, "runs", "list")
    row = next(line for line in listed.out.splitlines() if run_dir.name in line)
    assert "interrupted" in row and "running" not in row
    shown = run_cli(capsys, "runs", "show", run_dir.name)
    text = " ".join(shown.out.split())
    assert "status: interrupted" in text and f"tunesmith train --resume {run_dir.name}" in text

    resumed = run_cli(capsys, "train", "--resume", run_dir.name)
    assert resumed.code == 0, resumed.err
    assert Registry(home / "registry.db").run(run_dir.name)["status"] == "completed"
    assert "completed" in next(line for line in run_cli(capsys, "runs", "list").out.splitlines() if run_dir.name in line)


def test_a_run_whose_process_lives_stays_running_and_cannot_be_resumed_twice(capsys, home, tiny_model, tickets_file):
    """The other half of the check: a live owner (here a stand-in process) keeps `running`, and a
    second training of the same run is refused instead of overwriting its checkpoints."""
    import psutil

    prepared(capsys, tickets_file)
    killed = tunesmith("train", "--model", str(tiny_model), "--data", "tickets", *TRAIN, kill_at="step:3")
    assert killed.returncode == -9
    run_dir = only_run(home)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        owner = {"host": __import__("socket").gethostname(), "pid": alive.pid, "started": psutil.Process(alive.pid).create_time()}
        info = json.loads((run_dir / "run.json").read_text())
        (run_dir / "run.json").write_text(json.dumps({**info, "owner": owner}))
        with __import__("sqlite3").connect(home / "registry.db") as db:
            db.execute("UPDATE runs SET owner = ? WHERE id = ?", (json.dumps(owner), run_dir.name))
        assert "running" in next(line for line in run_cli(capsys, "runs", "list").out.splitlines() if run_dir.name in line)
        again = run_cli(capsys, "train", "--resume", run_dir.name)
        assert again.code == 2 and f"pid {alive.pid}" in again.err and "still being trained" in again.err
    finally:
        alive.kill()
        alive.wait()
    assert "interrupted" in next(line for line in run_cli(capsys, "runs", "list").out.splitlines() if run_dir.name in line)
    # A process that recorded its end in run.json but could not update the registry (a full disk): the folder is the truth.
    (run_dir / "run.json").write_text(json.dumps({**info, "status": "failed", "stop_reason": "disk full"}))
    assert "failed" in next(line for line in run_cli(capsys, "runs", "list").out.splitlines() if run_dir.name in line)


def assert_failed_cleanly(home: Path, result: subprocess.CompletedProcess, step: int) -> Path:
    run_dir = only_run(home)
    err = squash(result.stderr)  # the terminal wraps long lines, inside paths too
    assert result.returncode == 1, result.stderr
    assert squash(f"disk full while writing checkpoint step {step} under {run_dir}") in err
    assert squash(f"free space and `tunesmith train --resume {run_dir.name}`") in err
    assert "Traceback" not in result.stderr and "registry" not in err.lower()  # one line, and no bookkeeping error on top of it
    assert not list((run_dir / "checkpoints").glob(".step-*.tmp"))  # the half checkpoint is gone
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "failed" and "disk full" in info["stop_reason"]
    assert Registry(home / "registry.db").run(run_dir.name)["status"] == "failed"
    return run_dir


def test_a_disk_that_fills_during_a_checkpoint_fails_the_run_cleanly(capsys, home, tiny_model, tickets_file):
    """ENOSPC raised where the checkpoint is written (TUNESMITH_TEST_KILL_AT=enospc:N): runs on any
    machine; the test below fills a real small filesystem where mounting one is permitted."""
    prepared(capsys, tickets_file)
    result = tunesmith("train", "--model", str(tiny_model), "--data", "tickets", *TRAIN, "--max-steps", "8", kill_at="enospc:8")
    run_dir = assert_failed_cleanly(home, result, 8)
    assert run_cli(capsys, "train", "--resume", run_dir.name).code == 0
    assert json.loads((run_dir / "run.json").read_text())["status"] == "completed"


@pytest.fixture()
def small_disk(tmp_path):
    """A 4 MiB tmpfs: only root may mount one (skipped otherwise; the injected test above still runs)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small filesystem needs root")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", f"tunesmith-test-{uuid.uuid4().hex[:6]}", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_really_full_disk_fails_the_run_cleanly(capsys, monkeypatch, small_disk, tiny_model, tickets_file):
    """Full fine-tuning writes the whole model at each checkpoint; the disk is filled so that the run
    starts but its first checkpoint cannot be written."""
    home = small_disk / "home"
    monkeypatch.setenv("TUNESMITH_HOME", str(home))
    prepared(capsys, tickets_file)
    model_bytes = (tiny_model / "model.safetensors").stat().st_size
    filler = small_disk / "filler"
    free = shutil.disk_usage(small_disk).free
    filler.write_bytes(b"\0" * (free - model_bytes // 2 - 96 * 1024))  # room for the run's small files, not for a checkpoint
    result = tunesmith("train", "--model", str(tiny_model), "--data", "tickets", "--method", "full", "--batch-size", "4", "--lr", "1e-4", "--max-steps", "8")
    run_dir = assert_failed_cleanly(home, result, 8)
    filler.unlink()  # the user frees space, and goes on where the run stopped
    resumed = run_cli(capsys, "train", "--resume", run_dir.name)
    assert resumed.code == 0, resumed.err


def test_a_run_that_runs_out_of_memory_names_the_settings_that_need_less_and_keeps_its_record(capsys, home, tiny_model, tickets_file):
    """TUNESMITH_TEST_KILL_AT=oom:5 makes a real allocation inside step 5 that the allocator refuses, as a
    batch too big for a GPU does: one message with what could not be allocated and the settings that
    need less memory for the same result, no traceback, the run recorded as failed."""
    prepared(capsys, tickets_file)
    result = tunesmith("train", "--model", str(tiny_model), "--data", "tickets", *TRAIN, "--max-steps", "8", kill_at="oom:5")
    run_dir = only_run(home)
    err = squash(result.stderr)
    assert result.returncode == 1, result.stderr
    assert squash(f"training run {run_dir.name} ran out of memory (can't allocate memory: you tried to allocate {1 << 60} bytes)") in err
    assert squash("train.gradient_checkpointing: true") in err and squash("train.tokens_per_forward: N") in err
    assert "Traceback" not in result.stderr
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "failed" and "ran out of memory" in info["stop_reason"]
    assert Registry(home / "registry.db").run(run_dir.name)["status"] == "failed"
