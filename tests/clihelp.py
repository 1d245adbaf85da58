"""Run the real CLI entry point in-process and capture what a user would see."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from conftest import run_id_from


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


def train_one_process(capsys, monkeypatch, home: Path, config: Path) -> Path:
    """`tunesmith train --config` in this process with TUNESMITH_HOME=home: the run folder to compare others against."""
    monkeypatch.setenv("TUNESMITH_HOME", str(home))
    single = run_cli(capsys, "train", "--config", str(config))
    assert single.code == 0, single.err
    return home / "runs" / run_id_from(single.out)


def model_with_a_nan_weight(tiny_model: Path, folder: Path) -> Path:
    """A copy of the tiny model whose first MLP down-projection holds a NaN: its loss is NaN from step 1."""
    from safetensors.torch import load_file, save_file

    folder.mkdir()
    for file in tiny_model.iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    weights = load_file(str(folder / "model.safetensors"))
    name = next(k for k in weights if "mlp.down_proj" in k)
    weights[name][0, 0] = float("nan")
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder
