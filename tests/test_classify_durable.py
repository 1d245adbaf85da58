"""A classification run is as durable as a causal-LM one, because it trains in the same loop: killed
or stopped by a budget and resumed, it equals the uninterrupted run; a non-finite loss stops it with
the last good checkpoint kept; early stopping keeps the best macro-F1 checkpoint."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from clihelp import run_cli, tunesmith
from conftest import classification_records, events, only_run, run_id_from, train_steps, validations
from safetensors.torch import load_file


def curve(run_dir: Path) -> tuple[list, list]:
    return [(r["step"], r["loss"], r["lr"]) for r in train_steps(run_dir)], validations(run_dir)


def one_line(text: str) -> str:
    return " ".join(text.split())  # the terminal wraps long lines


def same_weights(a: Path, b: Path, atol: float = 1e-6, rtol: float = 0.0) -> None:
    (file_a,), (file_b,) = a.glob("*.safetensors"), b.glob("*.safetensors")
    weights_a, weights_b = load_file(str(file_a)), load_file(str(file_b))
    assert weights_a.keys() == weights_b.keys()
    for key in weights_a:
        assert torch.allclose(weights_a[key], weights_b[key], atol=atol, rtol=rtol), key


def write_config(tmp_path: Path, model: Path, **train) -> Path:
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps({"model": {"name": str(model)}, "data": {"dataset": "classes"}, "train": {"task": "classification", **train}}))
    return config


@pytest.fixture()
def classes(capsys, home, classes_file) -> str:
    result = run_cli(capsys, "data", "prepare", str(classes_file), "--out", "classes", "--pii", "off", "--no-near-dedup")
    assert result.code == 0, result.err
    return "classes"


def test_killed_classifier_run_resumes_to_the_uninterrupted_result(home, tiny_bert, classes, tmp_path):
    # 72 training examples / batch 8 = 9 steps per epoch, 18 in all; validation at 5, 9, 14, 18; checkpoints every 4 steps too.
    config = write_config(tmp_path, tiny_bert, method="full", lr=1e-3, epochs=2, batch_size=8, evals_per_epoch=2, save_every_steps=4)
    whole = tunesmith("train", "--config", str(config))
    assert whole.returncode == 0, whole.stderr
    reference = home / "runs" / run_id_from(whole.stdout)

    before = {p.name for p in (home / "runs").iterdir()}
    killed = tunesmith("train", "--config", str(config), kill_at="step:7")  # inside step 7: the last checkpoint is step 5
    assert killed.returncode == -9
    run_dir = only_run(home, besides=before)
    name = run_dir.name
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running"
    assert (run_dir / "checkpoints" / "step-5" / "labels.json").is_file()

    again = tunesmith("train", "--resume", name, kill_at="ckpt:12")  # inside the write of checkpoint 12
    assert again.returncode == -9 and (run_dir / "checkpoints" / ".step-12.tmp").is_dir()
    done = tunesmith("train", "--resume", name)
    assert done.returncode == 0, done.stderr
    assert "resuming at step 9 of 18" in done.stderr  # not the half-written step 12

    train_a, val_a = curve(reference)
    train_b, val_b = curve(run_dir)
    assert [s for s, _, _ in train_b] == list(range(1, 19))  # every step once
    for (step, loss_a, lr_a), (_, loss_b, lr_b) in zip(train_a, train_b):
        assert abs(loss_a - loss_b) <= 1e-6 and abs(lr_a - lr_b) <= 1e-12, f"step {step}: {loss_a} vs {loss_b}, lr {lr_a} vs {lr_b}"
    assert val_a == val_b and [r["step"] for r in val_b] == [5, 9, 14, 18]
    info_a, info_b = (json.loads((d / "run.json").read_text()) for d in (reference, run_dir))
    assert info_b["status"] == "completed"
    assert (info_a["best_step"], info_a["best_metrics"]) == (info_b["best_step"], info_b["best_metrics"])
    same_weights(reference / "model", run_dir / "model")
    assert json.loads((run_dir / "model" / "labels.json").read_text()) == info_b["labels"]
    assert not any(p.name.endswith(".tmp") for p in (run_dir / "checkpoints").iterdir())


def test_classifier_stopped_by_max_time_resumes_to_the_uninterrupted_result(capsys, home, tiny_bert, classes, tmp_path):
    config = write_config(tmp_path, tiny_bert, method="lora", lr=2e-2, max_steps=6, batch_size=8, evals_per_epoch=2)
    whole = run_cli(capsys, "train", "--config", str(config))
    assert whole.code == 0, whole.err
    reference = home / "runs" / run_id_from(whole.out)

    stopped = run_cli(capsys, "train", "--config", str(config), "--max-time", "0.001")  # any step takes longer: stops after step 1
    assert stopped.code == 0, stopped.err
    run_id = run_id_from(stopped.out)
    run_dir = home / "runs" / run_id
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "stopped" and "--max-time 0.001 s reached" in info["stop_reason"]
    assert f"tunesmith train --resume {run_id}" in one_line(stopped.err)
    assert [r["step"] for r in train_steps(run_dir)] == [1]
    assert (run_dir / "checkpoints" / "step-1" / "trainer_state.pt").is_file() and (run_dir / "adapter" / "labels.json").is_file()

    resumed = run_cli(capsys, "train", "--resume", run_id)
    assert resumed.code == 0, resumed.err
    assert curve(reference) == curve(run_dir)
    assert json.loads((run_dir / "run.json").read_text())["status"] == "completed"
    same_weights(reference / "adapter", run_dir / "adapter")  # the LoRA weights and the new head


def test_non_finite_classifier_loss_stops_with_exit_1_and_keeps_the_last_good_checkpoint(home, tiny_bert, classes):
    from tunesmith.config import RunSpec
    from tunesmith.errors import TrainingFailed
    from tunesmith.train.recipe import train
    from tunesmith.workspace import Workspace

    spec = RunSpec.model_validate(
        {
            "model": {"name": str(tiny_bert)},
            "data": {"dataset": classes},
            "train": {"task": "classification", "method": "full", "epochs": 1, "batch_size": 8, "save_every_steps": 1, "warmup_ratio": 0.0},
        }
    )
    object.__setattr__(spec.train, "lr", 1e30)  # past the config's guard, as a buggy caller could: one step makes every weight ~1e30
    with pytest.raises(TrainingFailed) as caught:
        train(spec, Workspace.from_env())
    assert caught.value.exit_code == 1
    run_dir = only_run(home)
    assert f"at step 2; training stopped and the last good checkpoint is kept: {run_dir / 'checkpoints' / 'step-1'}" in str(caught.value)
    assert (run_dir / "checkpoints" / "step-1" / "labels.json").is_file()
    diverged = events(run_dir, "diverged")
    assert len(diverged) == 1 and [r["step"] for r in train_steps(run_dir)] == [1]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "failed" and "step 2" in info["stop_reason"]


def test_early_stopping_keeps_the_best_macro_f1_checkpoint(capsys, home, tiny_bert, tmp_path):
    # Validation labels are rotated: the better the head learns the training labels, the worse it does on validation.
    train_file, val_file = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in classification_records(60, 0)))
    rotate = {"billing": "bug", "bug": "praise", "praise": "billing"}
    val_file.write_text("".join(json.dumps({**r, "label": rotate[r["label"]]}) + "\n" for r in classification_records(18, 5)))
    prepared = run_cli(capsys, "data", "prepare", str(train_file), "--out", "classes", "--pii", "off", "--no-near-dedup", "--validation-file", str(val_file))
    assert prepared.code == 0, prepared.err
    config = write_config(tmp_path, tiny_bert, method="full", lr=1e-3, epochs=8, batch_size=8, evals_per_epoch=2, early_stopping_patience=2)
    result = run_cli(capsys, "train", "--config", str(config))
    assert result.code == 0, result.err
    run_dir = home / "runs" / run_id_from(result.out)
    checked = validations(run_dir)
    best = max(checked, key=lambda r: (r["val_f1_macro"], -r["val_loss"]))
    assert checked[-3]["step"] == best["step"] and len(checked) < 16  # two validations without a new best, then stopped
    logged = {r["event"]: r for r in events(run_dir)}
    assert logged["early_stop"]["step"] == checked[-1]["step"] == max(r["step"] for r in train_steps(run_dir))
    assert "without a better macro-F1" in logged["early_stop"]["message"]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "completed" and "early stopping" in info["stop_reason"]
    assert info["best_step"] == best["step"] and info["best_metrics"] == {"accuracy": best["val_accuracy"], "f1_macro": best["val_f1_macro"]}
    kept = run_dir / "checkpoints" / f"step-{best['step']}" / "model.safetensors"
    assert (run_dir / "model" / "model.safetensors").read_bytes() == kept.read_bytes()


def test_generation_during_training_and_packing_are_refused_for_a_classifier(capsys, home, tiny_bert, classes, tmp_path):
    config = write_config(tmp_path, tiny_bert, forgetting_every_steps=5)
    result = run_cli(capsys, "train", "--config", str(config))
    assert result.code == 2 and "does not support forgetting_every_steps: a classifier writes no text to score" in one_line(result.err)
    config = write_config(tmp_path, tiny_bert, packing=True)
    result = run_cli(capsys, "train", "--config", str(config))
    assert result.code == 2 and "train.packing true cannot be used with task classification" in one_line(result.err)


def test_classifier_dry_run_prints_the_estimate_creates_no_run_and_the_run_takes_those_steps(capsys, home, tiny_bert, classes):
    args = ["train", "--model", str(tiny_bert), "--data", classes, "--task", "classification", "--batch-size", "8", "--epochs", "2"]
    dry = run_cli(capsys, *args, "--dry-run", "--price-per-hour", "3.6")
    assert dry.code == 0, dry.err
    shown = one_line(dry.out)
    assert "optimizer steps" in shown and "18 (9 per epoch x 2 epochs)" in shown and "at 3.6 per hour" in shown
    assert not (home / "runs").is_dir() or not any((home / "runs").iterdir())
    result = run_cli(capsys, *args)
    assert result.code == 0, result.err
    run_dir = home / "runs" / run_id_from(result.out)
    assert [r["step"] for r in train_steps(run_dir)] == list(range(1, 19))
    assert json.loads((run_dir / "estimate.json").read_text())["total_steps"] == 18


def without_dropout(model: Path, folder: Path) -> Path:
    """A copy of the encoder with dropout off: every process draws its own dropout masks, so only
    without dropout do two processes give one process's numbers."""
    shutil.copytree(model, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_a_classifier_in_two_processes_stopped_and_resumed_equals_one_process(home, tiny_bert, classes, tmp_path):
    """--nproc 2 trains a classifier (each process half of every batch), stops both processes on a
    budget after step 1 and resumes them: the curve, validation scores and weights are one process's."""
    config = write_config(tmp_path, without_dropout(tiny_bert, tmp_path / "encoder"), method="full", lr=1e-3, epochs=1, batch_size=8, evals_per_epoch=2)
    whole = tunesmith("train", "--config", str(config))
    assert whole.returncode == 0, whole.stderr
    reference = home / "runs" / run_id_from(whole.stdout)

    stopped = tunesmith("train", "--config", str(config), "--nproc", "2", "--max-time", "0.001")
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    run_dir = only_run(home, besides={reference.name})
    name = run_dir.name
    assert stopped.stdout.split() == [name] and json.loads((run_dir / "run.json").read_text())["status"] == "stopped"
    resumed = tunesmith("train", "--resume", name, "--nproc", "2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming at step 1 of 9" in one_line(resumed.stderr)

    (steps, validations), (ref_steps, ref_validations) = curve(run_dir), curve(reference)
    assert [s for s, _, _ in steps] == [s for s, _, _ in ref_steps] == list(range(1, 10))
    assert [lr for _, _, lr in steps] == [lr for _, _, lr in ref_steps]
    assert [loss for _, loss, _ in steps] == pytest.approx([loss for _, loss, _ in ref_steps], rel=1e-4)
    assert [(v["step"], v["val_accuracy"], v["val_f1_macro"]) for v in validations] == [
        (v["step"], v["val_accuracy"], v["val_f1_macro"]) for v in ref_validations
    ]
    assert [v["val_loss"] for v in validations] == pytest.approx([v["val_loss"] for v in ref_validations], rel=1e-4)
    same_weights(run_dir / "model", reference / "model", atol=1e-5, rtol=1e-3)  # two processes sum gradients in another order


def test_bad_input_found_inside_two_processes_exits_2_without_a_traceback(home, tiny_bert, tmp_path):
    """A single-label file passes preparation in the launching process and is refused inside the
    training processes: the launch ends as one process would, the message once, exit 2."""
    one_label = tmp_path / "one.jsonl"
    one_label.write_text("".join(json.dumps({"text": f"refund order {i}", "label": "billing"}) + "\n" for i in range(20)), encoding="utf-8")
    done = tunesmith("train", "--model", str(tiny_bert), "--data", str(one_label), "--task", "classification", "--nproc", "2")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert one_line(done.stderr).count("a classifier needs at least two labels") == 1
    assert not re.search(r"^[EWI]\d{4} ", done.stderr, re.M), done.stderr[-3000:]  # torch.distributed.run's own failure logs


def test_a_classifier_step_split_into_smaller_forward_passes_is_the_same_step(tiny_bert):
    from transformers import AutoTokenizer

    from tunesmith.config import ModelSpec, TrainSpec
    from tunesmith.data.example import Example, Message
    from tunesmith.models.classifier import encode, load_classifier
    from tunesmith.models.methods import apply_method
    from tunesmith.train.batching import Batch
    from tunesmith.train.parallel.strategy import Plain
    from tunesmith.train.step import optimizer_step
    from tunesmith.train.tasks.classification import Classification

    labels = ["billing", "bug", "praise"]
    rows = classification_records(12, 3)
    examples = [Example(id=str(i), messages=[Message(role="user", content=r["text"])], label=r["label"]) for i, r in enumerate(rows)]
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    items = encode(tokenizer, examples, {name: i for i, name in enumerate(labels)}, 64)
    objective, widest, pad_id = Classification(labels), max(len(item.input_ids) for item in items), tokenizer.pad_token_id
    chunks = objective.tensors(Batch(items, max_tokens=3 * widest), pad_id)
    assert len(chunks) >= 4 and all(c["input_ids"].numel() <= 3 * widest for c in chunks)
    assert sorted(int(label) for c in chunks for label in c["labels"]) == sorted(item.label for item in items)
    steps = []
    for budget in (None, 3 * widest):
        torch.manual_seed(0)
        model, _, device = load_classifier(ModelSpec(name=str(tiny_bert), device="cpu"), str(tiny_bert), labels)
        model = apply_method(
            model, TrainSpec(task="classification", method="full", lr=1e-3), task="classification"
        ).eval()  # no dropout: both steps see the same network
        params = [p for p in model.parameters() if p.requires_grad]
        loss, *_ = optimizer_step(model, [Batch(items, max_tokens=budget)], pad_id, device, params, torch.optim.SGD(params, lr=0.5), 1e9, objective, Plain())
        steps.append((loss, torch.cat([p.detach().flatten() for p in params])))
    assert steps[0][0] == pytest.approx(steps[1][0], rel=1e-5)
    torch.testing.assert_close(steps[0][1], steps[1][1], rtol=1e-4, atol=1e-6)
