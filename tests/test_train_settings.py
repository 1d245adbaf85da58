"""Training settings: max_steps, lr defaults and multiplier, schedulers, 'auto' and replay."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from clihelp import run_cli
from conftest import run_id_from, train_steps

from tunesmith.config import DEFAULT_LR, TrainSpec
from tunesmith.train.settings import make_schedule, plan_steps, replay_count, replay_sample, resolve_settings

CPU = torch.device("cpu")


def test_every_method_has_a_default_lr():
    methods = TrainSpec.model_fields["method"].annotation.__args__
    assert set(methods) <= set(DEFAULT_LR)


def test_lr_and_lr_multiplier_are_exclusive_and_named_by_path(capsys, home):
    result = run_cli(capsys, "train", "--data", "x", "--lr", "0.01", "--lr-multiplier", "2")
    assert result.code == 2 and "train.lr_multiplier: give train.lr or train.lr_multiplier, not both" in result.err
    result = run_cli(capsys, "train", "--data", "x", "--method", "full", "--lr-multiplier", "80")
    assert result.code == 2 and "train.lr_multiplier:" in result.err and "far too high" in " ".join(result.err.split())


@pytest.mark.parametrize(("field", "value"), [("epochs", 0), ("epochs", "many"), ("batch_size", True), ("lr", "fast"), ("grad_accum", 1.5)])
def test_bad_numbers_or_auto_are_refused_by_path(field, value):
    with pytest.raises(Exception, match=f"{field}"):
        TrainSpec.model_validate({field: value})


def test_method_default_lr_and_multiplier():
    full, _ = resolve_settings(TrainSpec(method="full", lr_multiplier=2.0), 100, CPU)
    assert full.lr == pytest.approx(2 * DEFAULT_LR["full"]) and full.lr_multiplier is None
    lora, notes = resolve_settings(TrainSpec(), 100, CPU)
    assert lora.lr == DEFAULT_LR["lora"] and "lora default" in notes["lr"]
    explicit, notes = resolve_settings(TrainSpec(lr=0.03), 100, CPU)
    assert explicit.lr == 0.03 and "lr" not in notes


@pytest.mark.parametrize(("n", "batch", "accum", "epochs"), [(60, 4, 1, 5), (500, 4, 1, 2), (1_000, 4, 2, 1), (5_000, 4, 8, 1), (100_000, 4, 8, 1)])
def test_auto_rule_on_cpu(n, batch, accum, epochs):
    cfg, notes = resolve_settings(TrainSpec(epochs="auto", batch_size="auto", grad_accum="auto", lr="auto"), n, CPU)
    assert (cfg.batch_size, cfg.grad_accum, cfg.epochs) == (batch, accum, epochs)
    assert cfg.lr == pytest.approx(DEFAULT_LR["lora"] * math.sqrt(batch * accum / 8))
    assert set(notes) == {"batch_size", "grad_accum", "epochs", "lr"}


def test_max_steps_overrides_epochs_and_ends_with_a_validation():
    plan = plan_steps(TrainSpec(epochs=1, batch_size=4, max_steps=30, save_every_steps=7), 48)
    assert (plan.steps_per_epoch, plan.total_steps, plan.epochs) == (12, 30, 3)
    assert plan.eval_steps == {12, 24, 30} and plan.save_steps == {7, 14, 21, 28}
    assert [plan.epoch_of(s) for s in (1, 12, 13, 30)] == [1, 1, 2, 3]


@pytest.mark.parametrize(
    ("kind", "expected"),
    [("constant", [0.5, 1.0, 1.0, 1.0, 1.0]), ("linear", [0.5, 1.0, 1.0, 0.875, 0.75]), ("cosine", [0.5, 1.0, 1.0, 0.9619, 0.8536])],
)
def test_schedulers(kind, expected):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = make_schedule(optimizer, TrainSpec(scheduler=kind, warmup_ratio=0.2), 10)  # 2 warm-up steps of 10
    seen = []
    for _ in range(5):
        seen.append(round(optimizer.param_groups[0]["lr"], 4))
        optimizer.step()
        schedule.step()
    assert seen == expected


def test_replay_draw_is_seeded_fresh_per_epoch_and_sized_by_fraction():
    pool = list(range(30))
    assert replay_count(80, 0.2) == 20
    first = replay_sample(pool, 20, seed=0, epoch=1)
    assert first == replay_sample(pool, 20, seed=0, epoch=1) and len(set(first)) == 20
    assert first != replay_sample(pool, 20, seed=0, epoch=2)
    assert sorted(replay_sample(pool, 45, seed=0, epoch=1)).count(0) in (1, 2)  # cycles through a small pool


def test_auto_max_steps_multiplier_constant_and_replay_in_a_real_run(capsys, home, tiny_model, tickets_file, tmp_path):
    assert run_cli(capsys, "data", "prepare", str(tickets_file), "--out", "tickets", "--pii", "off").code == 0
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({"prompt": f"say {w}", "completion": w}) + "\n" for w in ("yes", "no", "maybe", "never", "always") * 4))
    assert run_cli(capsys, "data", "prepare", str(other), "--out", "other", "--pii", "off", "--no-dedup", "--no-near-dedup").code == 0
    config = tmp_path / "run.yaml"
    config.write_text(
        f"model: {{name: {tiny_model}}}\n"
        f"data: {{dataset: tickets, replay: {{dataset: other, fraction: 0.2}}, keep_general: null}}\n"
        "train: {epochs: auto, batch_size: 4, lr_multiplier: 3, scheduler: constant, warmup_ratio: 0.0, max_steps: 20}\n"
    )
    result = run_cli(capsys, "train", "--config", str(config))
    assert result.code == 0, result.err
    run_dir = home / "runs" / run_id_from(result.out)
    steps = train_steps(run_dir)
    assert len(steps) == 20 and all(r["lr"] == pytest.approx(3 * DEFAULT_LR["lora"]) for r in steps)
    assert all(r["peak_mem_mb"] > 10 for r in steps)
    # 48 training examples + 12 replayed (20% of each epoch) in batches of 4: 15 steps per epoch, so epoch 2 starts at step 16.
    assert [r["epoch"] for r in steps][14:16] == [1.0, 1.0667]
    text = (run_dir / "config.yaml").read_text()
    assert "# train.epochs: auto:" in text and "# train.lr: lora default 0.001 x lr_multiplier 3" in text
    saved = yaml.safe_load(text)["train"]
    assert saved["epochs"] == 5 and saved["lr"] == pytest.approx(0.003) and saved["lr_multiplier"] is None


def test_auto_on_the_command_line_resolves_like_the_config_file(capsys, home, tiny_bert, classes_file):
    assert run_cli(capsys, "data", "prepare", str(classes_file), "--out", "classes", "--pii", "off", "--no-near-dedup").code == 0
    result = run_cli(
        capsys,
        "train",
        "--model",
        str(tiny_bert),
        "--data",
        "classes",
        "--task",
        "classification",
        "--max-steps",
        "2",
        "--epochs",
        "auto",
        "--batch-size",
        "auto",
        "--grad-accum",
        "AUTO",
        "--lr",
        "auto",
    )
    assert result.code == 0, result.err
    text = (home / "runs" / run_id_from(result.out) / "config.yaml").read_text()
    for field in ("epochs", "batch_size", "grad_accum", "lr"):
        assert f"# train.{field}: auto:" in text
    saved = yaml.safe_load(text)["train"]
    # 72 training examples on CPU: batch 4, effective batch 4 (72/100 clamped up to 4), ceil(1000/72) epochs clamped to 5.
    assert (saved["batch_size"], saved["grad_accum"], saved["epochs"]) == (4, 1, 5)
    assert saved["lr"] == pytest.approx(1e-3 * math.sqrt(4 / 8))


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--epochs", "many", "--epochs 'many' is not a whole number or 'auto'"),
        ("--grad-accum", "1.5", "--grad-accum '1.5' is not a whole number or 'auto'"),
        ("--lr", "fast", "--lr 'fast' is not a number or 'auto'"),
        ("--batch-size", "0", "train.batch_size: must be a whole number from 1 to 4096, or 'auto'"),
    ],
)
def test_bad_numbers_or_auto_on_the_command_line_exit_2_naming_the_flag(capsys, home, flag, value, message):
    result = run_cli(capsys, "train", "--data", "x", flag, value)
    assert result.code == 2 and message in " ".join(result.err.split()) and "Traceback" not in result.err
