"""What stops a run early: divergence (exit 1, last good checkpoint kept), early stopping with the
best checkpoint restored, the overfitting warning, and time/cost budgets (resumable)."""

from __future__ import annotations

import json
import random

import pytest
from clihelp import model_with_a_nan_weight, run_cli
from conftest import events, only_run, run_id_from, step_losses, tiny_records, train_steps, validations

from tunesmith.config import PrepareSpec, RunSpec
from tunesmith.errors import TrainingFailed
from tunesmith.registry.store import Registry
from tunesmith.workspace import Workspace


def one_line(text: str) -> str:
    return " ".join(text.split())  # the terminal wraps long lines


def test_divergence_stops_with_exit_1_and_names_the_last_good_checkpoint(home, tiny_model, tickets_file):
    from tunesmith.data.dataset import prepare_dataset
    from tunesmith.train.recipe import train

    ws = Workspace.from_env()
    prepare_dataset(tickets_file, ws, name="tickets", options=PrepareSpec(pii="off"))
    spec = RunSpec.model_validate(
        {
            "model": {"name": str(tiny_model)},
            "data": {"dataset": "tickets"},
            "train": {"method": "full", "epochs": 1, "batch_size": 4, "save_every_steps": 1, "warmup_ratio": 0.0},
        }
    )
    # Past the config's guard, as a buggy caller could: after one step at lr 1e30 the next forward overflows.
    object.__setattr__(spec.train, "lr", 1e30)
    with pytest.raises(TrainingFailed) as caught:
        train(spec, ws)
    assert caught.value.exit_code == 1
    run_dir = only_run(home)
    diverged = events(run_dir, "diverged")
    assert len(diverged) == 1 and ("became nan" in diverged[0]["message"] or "became inf" in diverged[0]["message"])
    kept = sorted((run_dir / "checkpoints").iterdir())
    assert kept and str(kept[-1]) in str(caught.value)  # the latest checkpoint is named and is still there
    assert all(map(lambda x: x == x and abs(x) != float("inf"), step_losses(run_dir)))  # nothing non-finite was logged as a step
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "failed" and "step" in info["stop_reason"]
    assert Registry(ws.registry_db).run(run_dir.name)["status"] == "failed"


def test_a_model_that_produces_nan_exits_1_without_a_traceback(capsys, home, tiny_model, tickets_file, tmp_path):
    broken = model_with_a_nan_weight(tiny_model, tmp_path / "broken-model")
    assert run_cli(capsys, "data", "prepare", str(tickets_file), "--out", "tickets", "--pii", "off").code == 0
    result = run_cli(capsys, "train", "--model", str(broken), "--data", "tickets", "--epochs", "1")
    assert result.code == 1 and "Traceback" not in result.err
    assert "at step 1; training stopped and no checkpoint had been written yet" in one_line(result.err)


def test_early_stopping_restores_the_best_checkpoint_and_warns_of_overfitting(capsys, home, tiny_model, tmp_path):
    # Validation answers are scrambled: the better the model learns the training answers, the worse it does on them.
    train_file, val_file = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in tiny_records(60)))
    rng, val = random.Random(0), tiny_records(12, 5)
    for record in val:
        answer = record["messages"][-1]["content"]
        record["messages"][-1]["content"] = "".join(rng.sample(answer, len(answer)))
    val_file.write_text("".join(json.dumps(r) + "\n" for r in val))
    prepared = run_cli(capsys, "data", "prepare", str(train_file), "--out", "scrambled", "--pii", "off", "--validation-file", str(val_file))
    assert prepared.code == 0, prepared.err
    config = tmp_path / "run.yaml"
    config.write_text(
        f"model: {{name: {tiny_model}}}\ndata: {{dataset: scrambled, keep_general: false}}\n"
        "train: {epochs: 4, batch_size: 4, lr: 3.0e-2, evals_per_epoch: 2, early_stopping_patience: 2}\n"
    )
    result = run_cli(capsys, "train", "--config", str(config))
    assert result.code == 0, result.err
    run_dir = home / "runs" / run_id_from(result.out)
    checked = [(r["step"], r["val_loss"]) for r in validations(run_dir)]
    best_step, best_loss = min(checked, key=lambda v: v[1])
    assert all(v > checked[-3][1] for _, v in checked[-2:])  # two evaluations without a new best
    assert checked[-3][0] == best_step and len(checked) < 8  # stopped before the 4 epochs' 8 validations
    logged = {r["event"]: r for r in events(run_dir)}
    assert "overfitting" in logged and "training loss fell" in logged["overfitting"]["message"]
    assert "overfitting" in one_line(result.err)
    assert logged["early_stop"]["step"] == checked[-1][0] == max(r["step"] for r in train_steps(run_dir))
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "completed" and info["best_step"] == best_step and info["best_val_loss"] == best_loss
    assert "early stopping" in info["stop_reason"]
    adapter = (run_dir / "adapter" / "adapter_model.safetensors").read_bytes()
    assert adapter == (run_dir / "checkpoints" / f"step-{best_step}" / "adapter_model.safetensors").read_bytes()


def test_time_budget_stops_cleanly_and_the_run_resumes_to_the_end(capsys, home, tiny_model, tickets_file):
    assert run_cli(capsys, "data", "prepare", str(tickets_file), "--out", "tickets", "--pii", "off").code == 0
    result = run_cli(
        capsys, "train", "--model", str(tiny_model), "--data", "tickets", "--epochs", "10", "--batch-size", "4", "--max-time", "1", "--keep-general", "0"
    )
    assert result.code == 0, result.err
    run_id = run_id_from(result.out)
    run_dir = home / "runs" / run_id
    info = json.loads((run_dir / "run.json").read_text())
    steps = [r["step"] for r in train_steps(run_dir)]
    assert info["status"] == "stopped" and "--max-time 1 s reached" in info["stop_reason"] and len(steps) < 120
    assert f"tunesmith train --resume {run_id}" in one_line(result.err)
    assert (run_dir / "checkpoints" / f"step-{steps[-1]}" / "trainer_state.pt").is_file()
    assert (run_dir / "adapter").is_dir()  # usable already
    assert Registry(Workspace.from_env().registry_db).run(run_id)["status"] == "stopped"

    assert run_cli(capsys, "train", "--resume", run_id, "--max-cost", "1").code == 2  # a cost needs a price
    resumed = run_cli(capsys, "train", "--resume", run_id)
    assert resumed.code == 0, resumed.err
    steps = [r["step"] for r in train_steps(run_dir)]
    assert steps == list(range(1, 121))
    assert json.loads((run_dir / "run.json").read_text())["status"] == "completed"


def test_cost_budget_turns_price_into_seconds():
    from tunesmith.train.run.guards import Budget

    budget = Budget(max_cost=1.0, price_per_hour=3.6)  # 1000 s
    assert budget.exceeded(900, 50) is None
    assert "--max-cost 1 reached" in budget.exceeded(980, 50)
    assert Budget(max_seconds=10).exceeded(9.5, 1.0).startswith("--max-time 10 s reached")
