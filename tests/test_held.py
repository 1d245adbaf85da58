"""Cases issue 23 found holding on main, kept by tests so they keep holding: SQL built from names,
a pickle planted in a checkpoint, and two trainings started at once."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

from clihelp import SRC, run_cli, tunesmith
from conftest import only_run, run_id_from


def test_names_reach_sqlite_as_parameters_never_as_sql(tmp_path):
    from tunesmith.registry.store import Registry

    registry = Registry(tmp_path / "registry.db")
    hostile = "x'); DROP TABLE runs; --"
    registry.add_dataset(hostile, "v1", tmp_path, "messages", {"train": 1}, "file.jsonl")
    registry.start_run(hostile, hostile, "model", "lora", hostile, "v1", tmp_path)
    assert registry.dataset(hostile)["name"] == hostile
    assert [run["id"] for run in registry.runs()] == [hostile]  # the runs table is still there, with the name as written


class _Planted:
    """Unpickling this runs a command: the attack a shared checkpoint could carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_planted_in_a_checkpoint_never_runs(home, tiny_model, tickets_file, tmp_path, capsys):
    assert run_cli(capsys, "data", "prepare", str(tickets_file), "--out", "tickets", "--pii", "off").code == 0
    config = tmp_path / "run.yaml"
    config.write_text(
        f"model: {{name: {tiny_model}}}\ndata: {{dataset: tickets}}\ntrain: {{max_steps: 6, batch_size: 8, save_every_steps: 1}}\n", encoding="utf-8"
    )
    killed = tunesmith("train", "--config", str(config), kill_at="step:3")
    assert killed.returncode != 0
    run_dir = only_run(home)
    marker = tmp_path / "code-ran"
    for state in (run_dir / "checkpoints").glob("step-*/trainer_state.pt"):
        state.write_bytes(pickle.dumps(_Planted(marker)))

    result = run_cli(capsys, "train", "--resume", run_dir.name)
    assert not marker.exists()  # torch.load(weights_only=True) refuses the object instead of calling it
    assert "Traceback" not in result.err
    err = " ".join(result.err.split())
    assert "trainer_state.pt" in err and "damaged" in err  # named, then the run starts again from its first step
    assert result.code == 0, result.err


def test_two_trainings_started_at_once_both_register(home, tiny_model, tickets_file, capsys):
    assert run_cli(capsys, "data", "prepare", str(tickets_file), "--out", "tickets", "--pii", "off").code == 0
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    command = [sys.executable, "-m", "tunesmith", "train", "--model", str(tiny_model), "--data", "tickets", "--max-steps", "2"]
    processes = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], [err[-2000:] for _, err in outputs]
    run_ids = {run_id_from(out) for out, _ in outputs}
    assert len(run_ids) == 2

    from tunesmith.registry.store import Registry

    registered = {run["id"]: run["status"] for run in Registry(home / "registry.db").runs()}
    assert registered == {run_id: "completed" for run_id in run_ids}
