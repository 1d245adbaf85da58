"""Nothing is left behind: a killed `data prepare` leaves a working folder that the next command
removes (and says so), and a training with bad input creates nothing at all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from clihelp import SRC, run_cli

from tunesmith.workspace import staging_dir


def hidden(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.startswith(".")) if folder.is_dir() else []


def test_a_killed_prepare_leaves_a_folder_the_next_command_removes(capsys, home, tickets_file):
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    process = subprocess.Popen(
        [sys.executable, "-m", "tunesmith", "data", "prepare", str(tickets_file), "--out", "tickets"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not hidden(home / "datasets") and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)  # mid-prepare: its spill folder (the whole dataset, for a large file) stays
    process.wait()
    (leftover,) = hidden(home / "datasets")
    assert leftover.name.startswith(".prepare")
    working = staging_dir(home / "datasets", "prepare")  # another command's folder, still at work (this process): kept

    again = run_cli(capsys, "data", "prepare", str(tickets_file), "--out", "tickets", "--pii", "off")
    assert again.code == 0, again.err
    message = " ".join(again.err.split())
    assert f"removed{leftover}" in "".join(again.err.split())  # the terminal wraps long paths
    assert f"left by process {process.pid}, which ended before it finished" in message
    assert hidden(home / "datasets") == [working]


def test_a_bad_model_creates_no_run_folder_and_prepares_no_data(capsys, home, tickets_file, tmp_path):
    not_a_model = tmp_path / "weights"
    not_a_model.mkdir()
    for model, expected in ((str(tmp_path / "missing"), "unknown model"), (str(not_a_model), "no config.json")):
        result = run_cli(capsys, "train", "--model", model, "--data", str(tickets_file), "--max-steps", "2")
        assert result.code == 2 and expected in result.err
    assert not list((home / "runs").iterdir()) and not list((home / "datasets").iterdir())
    assert "not in the registry" not in run_cli(capsys, "runs", "list").err
