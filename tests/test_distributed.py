"""`tunesmith train --nproc 2` (two processes, gloo) trains exactly what one process trains."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from clihelp import run_cli


def losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_two_processes_match_one(capsys, tmp_path, monkeypatch, tiny_model, tickets_file):
    config = tmp_path / "run.yaml"
    config.write_text(
        f"model: {{name: {tiny_model}}}\ndata: {{path: {tickets_file}}}\n"
        "train: {epochs: 1, batch_size: 6, grad_accum: 2, lr: 1.0e-3, packing: true}\n"
    )
    monkeypatch.setenv("TUNESMITH_HOME", str(tmp_path / "one"))
    single = run_cli(capsys, "train", "--config", str(config))
    assert single.code == 0, single.err
    one_dir = tmp_path / "one" / "runs" / single.out.strip().splitlines()[-1]

    env = {**os.environ, "TUNESMITH_HOME": str(tmp_path / "two"), "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-m", "tunesmith", "train", "--config", str(config), "--nproc", "2"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = list((tmp_path / "two" / "runs").iterdir())
    assert len(runs) == 1 and done.stdout.split() == [runs[0].name]  # one run folder, reported once
    assert done.stderr.count("run folder:") == 1

    single_losses, double_losses = losses(one_dir), losses(runs[0])
    assert len(single_losses) == len(double_losses) >= 3
    for a, b in zip(single_losses, double_losses):
        assert abs(a - b) <= 1e-4 * max(1.0, abs(a))
    one = load_file(str(one_dir / "adapter" / "adapter_model.safetensors"))
    two = load_file(str(runs[0] / "adapter" / "adapter_model.safetensors"))
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-3, atol=1e-5, msg=key)
