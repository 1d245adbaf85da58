"""`tunesmith train --nproc 2` (two processes, gloo) trains exactly what one process trains."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from clihelp import run_cli, train_one_process
from conftest import events, only_run, step_losses, train_steps
from safetensors.torch import load_file


def assert_same_training(one_dir: Path, run_dir: Path) -> None:
    """The run's loss curve and saved adapter are those of the one-process run."""
    for a, b in zip(step_losses(one_dir), step_losses(run_dir), strict=True):
        assert abs(a - b) <= 1e-4 * max(1.0, abs(a))
    one = load_file(str(one_dir / "adapter" / "adapter_model.safetensors"))
    other = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    assert one.keys() == other.keys()
    for key in one:
        torch.testing.assert_close(other[key], one[key], rtol=1e-3, atol=1e-5, msg=key)


def budget_run_config(tmp_path: Path, tiny_model, tickets_file, extra: str = "") -> Path:
    """48 training examples + 12 of the default general-skills replay / batch 6 = 10 steps."""
    config = tmp_path / "run.yaml"
    config.write_text(
        f"model: {{name: {tiny_model}}}\ndata: {{path: {tickets_file}}}\n"
        f"train: {{epochs: 1, batch_size: 6, lr: 1.0e-3, packing: true, scheduler: cosine{extra}}}\n"
    )
    return config


@pytest.fixture(scope="module")
def budget_reference(tmp_path_factory, tiny_model) -> tuple[Path, Path]:
    """budget_run_config and its uninterrupted one-process run, trained once for the tests that stop
    and resume that config in other process counts: (config, the run folder)."""
    from conftest import tiny_records

    from tunesmith.config import load_run_spec
    from tunesmith.train.recipe import train
    from tunesmith.workspace import Workspace

    folder = tmp_path_factory.mktemp("budget-reference")
    tickets = folder / "tickets.jsonl"  # what the tickets_file fixture holds
    tickets.write_text("".join(json.dumps(r) + "\n" for r in tiny_records(60)), encoding="utf-8")
    config = budget_run_config(folder, tiny_model, tickets)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TUNESMITH_HOME", str(folder / "one"))
        return config, train(load_run_spec(config), Workspace.from_env(folder / "one")).run_dir


def stop_after_step_one_in_two_processes(home: Path, config: Path) -> tuple[subprocess.CompletedProcess, Path]:
    """--max-time 0.001 stops both processes after step 1 (process 0's clock decides)."""
    stopped = tunesmith_procs(home, "train", "--config", str(config), "--nproc", "2", "--max-time", "0.001")
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    run_dir = only_run(home)
    return stopped, run_dir


def test_two_processes_match_one(capsys, tmp_path, monkeypatch, tiny_model, tickets_file):
    config = tmp_path / "run.yaml"
    config.write_text(
        f"model: {{name: {tiny_model}}}\ndata: {{path: {tickets_file}}}\ntrain: {{epochs: 1, batch_size: 6, grad_accum: 2, lr: 1.0e-3, packing: true}}\n"
    )
    one_dir = train_one_process(capsys, monkeypatch, tmp_path / "one", config)

    env = {**os.environ, "TUNESMITH_HOME": str(tmp_path / "two"), "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-m", "tunesmith", "train", "--config", str(config), "--nproc", "2"], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = only_run(tmp_path / "two")
    assert done.stdout.split() == [run_dir.name]  # one run folder, reported once
    assert done.stderr.count("run folder:") == 1

    assert len(step_losses(one_dir)) >= 3
    assert_same_training(one_dir, run_dir)


def tunesmith_procs(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TUNESMITH_HOME": str(home), "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", "tunesmith", *args], env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # three runs, two of them in two processes: about 2 minutes on 2 cores
def test_two_processes_stop_on_a_budget_together_and_resume_exactly(capsys, tmp_path, monkeypatch, tiny_model, tickets_file):
    """Stopped on a budget after step 1, --resume --nproc 2 restores the same checkpoint in both
    processes: the curve and the adapter are those of one uninterrupted process."""
    config = budget_run_config(tmp_path, tiny_model, tickets_file, ", evals_per_epoch: 2")
    one_dir = train_one_process(capsys, monkeypatch, tmp_path / "one", config)

    home = tmp_path / "two"
    stopped, run_dir = stop_after_step_one_in_two_processes(home, config)
    assert stopped.stdout.split() == [run_dir.name] and " ".join(stopped.stderr.split()).count(f"run {run_dir.name} stopped") == 1
    assert json.loads((run_dir / "run.json").read_text())["status"] == "stopped"
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step-1"] and step_losses(run_dir) == step_losses(run_dir)[:1]

    resumed = tunesmith_procs(home, "train", "--resume", run_dir.name, "--nproc", "2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.split() == [run_dir.name] and resumed.stderr.count("resuming at step 1 of 10") == 1
    assert [r["step"] for r in train_steps(run_dir)] == list(range(1, 11))
    assert [r["step"] for r in events(run_dir, "resumed")] == [1]
    assert json.loads((run_dir / "run.json").read_text())["status"] == "completed"
    assert_same_training(one_dir, run_dir)

    again = tunesmith_procs(home, "train", "--resume", run_dir.name, "--nproc", "2")  # refused before any process starts
    assert again.returncode == 2 and "already completed" in again.stderr and "Traceback" not in again.stderr


def test_bad_data_with_nproc_is_refused_before_any_process_starts(capsys, tmp_path, monkeypatch, tiny_model):
    """Process 0 used to prepare the data while the others waited on it: a bad file ended in their
    tracebacks and exit 1. The launching process prepares it now, so it is one message and exit 2."""
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{not json\n', encoding="utf-8")
    home = tmp_path / "home"
    for data in (tmp_path / "missing.jsonl", broken):
        done = tunesmith_procs(home, "train", "--model", str(tiny_model), "--data", str(data), "--nproc", "2")
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
        assert "error:" in done.stderr and data.name in " ".join(done.stderr.split())
    assert not (home / "runs").exists() or not any((home / "runs").iterdir())


def test_a_process_that_dies_ends_the_launch_with_one_line_saying_which_and_how(tmp_path, tiny_model, tickets_file):
    """torch.distributed.run logged an E line per failed process and W lines as it stopped the
    others, in its own format; the launch now says it once, in tunesmith's."""
    env = {**os.environ, "TUNESMITH_HOME": str(tmp_path / "home"), "PYTHONPATH": os.pathsep.join(sys.path), "TUNESMITH_TEST_KILL_AT": "step:1"}
    done = subprocess.run(
        [sys.executable, "-m", "tunesmith", "train", "--model", str(tiny_model), "--data", str(tickets_file), "--nproc", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert re.search(r"error: training process [01] of 2 failed \(killed by SIGKILL\); the others were stopped$", " ".join(done.stderr.split())), done.stderr[
        -3000:
    ]
    assert not re.search(r"^[EWI]\d{4} ", done.stderr, re.M), done.stderr[-3000:]
    assert "Traceback" not in done.stderr


def test_dry_run_with_nproc_prints_one_estimate_and_creates_no_run(capsys, tmp_path, monkeypatch, tiny_model, tickets_file):
    monkeypatch.setenv("TUNESMITH_HOME", str(tmp_path / "home"))
    result = run_cli(capsys, "train", "--model", str(tiny_model), "--data", str(tickets_file), "--max-steps", "2", "--nproc", "2", "--dry-run")
    assert result.code == 0, result.err
    assert (result.out + result.err).count(" per epoch x ") == 1
    assert not (tmp_path / "home" / "runs").exists() or not any((tmp_path / "home" / "runs").iterdir())


def test_loading_a_model_keeps_the_thread_count_a_launcher_set(tiny_model, monkeypatch):
    """--nproc gives each process its share of the cores through OMP_NUM_THREADS; raising it back to
    every core made two processes on two cores run ~5x slower than one."""
    from tunesmith.config import ModelSpec
    from tunesmith.models.loading import load_model

    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    try:
        load_model(ModelSpec(name=str(tiny_model), device="cpu"))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow  # three runs, one of them in two processes: about 1.5 minutes on 2 cores
def test_a_run_stopped_in_two_processes_resumes_in_one(tmp_path, budget_reference):
    """The global batch, not the process count, fixes what a step trains: a run stopped under
    --nproc 2 and resumed in one process gives the uninterrupted one-process curve and adapter."""
    config, one_dir = budget_reference

    home = tmp_path / "switched"
    _, run_dir = stop_after_step_one_in_two_processes(home, config)
    resumed = tunesmith_procs(home, "train", "--resume", run_dir.name)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming at step 1 of 10" in resumed.stderr
    assert_same_training(one_dir, run_dir)


@pytest.mark.slow  # three runs, one of them in two processes: about 40 s on 2 cores
def test_a_run_stopped_in_one_process_resumes_in_two(tmp_path, budget_reference):
    """The other way round: stopped after step 1 in one process, resumed with --nproc 2 (process 1
    has no RNG state of its own in the checkpoint and takes process 0's), the curve and adapter are
    the uninterrupted one-process run's."""
    config, one_dir = budget_reference

    home = tmp_path / "switched"
    stopped = tunesmith_procs(home, "train", "--config", str(config), "--max-time", "0.001")
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    run_dir = only_run(home)
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step-1"]
    resumed = tunesmith_procs(home, "train", "--resume", run_dir.name, "--nproc", "2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.split() == [run_dir.name] and resumed.stderr.count("resuming at step 1 of 10") == 1
    assert_same_training(one_dir, run_dir)
