"""data → train → eval → registry, end to end through the CLI, on a tiny model in seconds."""

from __future__ import annotations

import json

import pytest
import torch
from clihelp import run_cli
from conftest import read_metrics, run_id_from, step_losses, validations
from safetensors.torch import load_file


def train_tiny(capsys, tiny_model, tickets_file, *extra: str):
    assert run_cli(capsys, "data", "prepare", str(tickets_file), "--out", "tickets").code == 0
    result = run_cli(capsys, "train", "--model", str(tiny_model), "--data", "tickets", "--epochs", "3", "--batch-size", "4", *extra)
    assert result.code == 0, result.err
    return run_id_from(result.out)


def test_lora_run_end_to_end(capsys, monkeypatch, home, tiny_model, tickets_file):
    run_id = train_tiny(capsys, tiny_model, tickets_file, "--lr", "3e-2")
    run_dir = home / "runs" / run_id
    for name in ("config.yaml", "dataset.json", "metrics.jsonl", "run.json", "loss.png", "adapter/adapter_model.safetensors", "adapter/tokenizer.json"):
        assert (run_dir / name).is_file(), name
    config = (run_dir / "config.yaml").read_text()
    assert "tunesmith:" in config and "transformers:" in config and "lr: 0.03" in config
    losses = step_losses(run_dir)
    val_losses = [r["val_loss"] for r in validations(run_dir)]
    assert len(val_losses) == 3  # validation loss every epoch
    assert sum(losses[-3:]) / 3 < 0.75 * sum(losses[:3]) / 3, losses  # the loss fell
    info = json.loads((run_dir / "run.json").read_text())
    assert info["best_val_loss"] == min(val_losses) and info["status"] == "completed"

    result = run_cli(capsys, "eval", run_id, "--compare-base", "--max-new-tokens", "12")
    assert result.code == 0, result.err
    assert "exact_match" in result.out and "base" in result.out and "tuned" in result.out
    report = json.loads((run_dir / "eval" / "report.json").read_text())
    assert set(report["test"]) == {"base", "tuned"}
    comparison = report["comparisons"]["test"]
    assert comparison["test"] == "mcnemar_exact" and comparison["ci_low"] <= comparison["delta"] <= comparison["ci_high"]
    assert len(comparison["improved_ids"]) == comparison["improved"]
    rows = (run_dir / "eval" / "test-tuned.jsonl").read_text().splitlines()
    assert len(rows) == json.loads((run_dir / "dataset.json").read_text())["counts"]["test"]
    html = (run_dir / "report.html").read_text()
    assert "data:image/png;base64," in html and "no evaluation example appears in training" in html

    listing = run_cli(capsys, "runs", "list")
    assert listing.code == 0 and run_id[:20] in listing.out
    shown = run_cli(capsys, "runs", "show", run_id)
    assert shown.code == 0 and "exact_match" in shown.out and "tickets" in shown.out

    answer = run_cli(capsys, "generate", run_id, "--prompt", "SSO-12 login loop, nobody can work", "--max-new-tokens", "5")
    assert answer.code == 0 and answer.out.strip()

    typed = iter(["SSO-12 login loop", "/reset", "GW-9 is slow", ""])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(typed))
    session = run_cli(capsys, "chat", run_id, "--max-new-tokens", "5")
    assert session.code == 0 and session.out.count("model> ") == 2


def test_every_trainable_lora_parameter_changed(capsys, home, tiny_model, tickets_file):
    from transformers import AutoModelForCausalLM

    from tunesmith.config import TrainSpec
    from tunesmith.models.methods import apply_method

    run_id = train_tiny(capsys, tiny_model, tickets_file, "--lr", "3e-2")
    trained = load_file(str(home / "runs" / run_id / "adapter" / "adapter_model.safetensors"))
    torch.manual_seed(0)  # the run's seed: the same initial adapter the run started from
    initial = apply_method(AutoModelForCausalLM.from_pretrained(tiny_model), TrainSpec())
    initial_state = {n: p for n, p in initial.named_parameters() if p.requires_grad}
    assert len(trained) == len(initial_state) > 0
    for name, before in initial_state.items():
        key = name.replace(".default", "")
        assert not torch.allclose(trained[key], before.detach()), f"{name} did not change"


def test_full_fine_tuning_changes_every_weight(capsys, home, tiny_model, tickets_file):
    run_id = train_tiny(capsys, tiny_model, tickets_file, "--method", "full", "--lr", "1e-3")
    base = load_file(str(tiny_model / "model.safetensors"))
    tuned = load_file(str(home / "runs" / run_id / "model" / "model.safetensors"))
    assert base.keys() == tuned.keys()
    unchanged = [k for k in base if torch.equal(base[k], tuned[k])]
    assert unchanged == []


def test_training_is_reproducible_with_the_same_seed(capsys, home, tiny_model, tickets_file):
    first = train_tiny(capsys, tiny_model, tickets_file)
    second = run_id_from(run_cli(capsys, "train", "--model", str(tiny_model), "--data", "tickets", "--epochs", "3", "--batch-size", "4").out)
    curves = [[r.get("loss") for r in read_metrics(home / "runs" / run)] for run in (first, second)]  # validations in place too
    assert curves[0] == curves[1]


@pytest.mark.parametrize("ref", ["no-such-run", "../escape"])
def test_unknown_run_is_a_clear_error(capsys, home, ref):
    result = run_cli(capsys, "eval", ref)
    assert result.code == 2 and "Traceback" not in result.err
    assert "runs list" in result.err or "not a valid name" in result.err


def test_validation_several_times_per_epoch_keeps_the_best_checkpoint(capsys, home, tiny_model, tickets_file, tmp_path):
    from tunesmith.train.settings import replay_count

    assert run_cli(capsys, "data", "prepare", str(tickets_file), "--out", "tickets").code == 0
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {{name: {tiny_model}}}\ndata: {{dataset: tickets}}\ntrain: {{epochs: 2, batch_size: 4, lr: 3.0e-2, evals_per_epoch: 3}}\n")
    result = run_cli(capsys, "train", "--config", str(config))
    assert result.code == 0, result.err
    run_dir = home / "runs" / run_id_from(result.out)
    checked = validations(run_dir)
    n_train = json.loads((run_dir / "dataset.json").read_text())["counts"]["train"]
    per_epoch = -(-(n_train + replay_count(n_train, 0.2)) // 4)  # the task's examples and the default general-skills replay
    expected = sorted({e * per_epoch - (k * per_epoch) // 3 for e in (1, 2) for k in range(3)})
    assert [r["step"] for r in checked] == expected and len(expected) == 6
    best = min(checked, key=lambda r: r["val_loss"])
    info = json.loads((run_dir / "run.json").read_text())
    assert info["best_step"] == best["step"] and info["best_val_loss"] == best["val_loss"]
    kept = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert kept == sorted({f"step-{best['step']}", f"step-{2 * per_epoch}"})
    adapter = (run_dir / "adapter" / "adapter_model.safetensors").read_bytes()
    assert adapter == (run_dir / "checkpoints" / f"step-{best['step']}" / "adapter_model.safetensors").read_bytes()


def test_a_runs_name_works_wherever_its_id_does_and_an_ambiguous_name_lists_the_ids(capsys, home, tiny_model, tickets_file):
    assert run_cli(capsys, "data", "prepare", str(tickets_file), "--out", "tickets", "--pii", "off").code == 0
    args = ("train", "--model", str(tiny_model), "--data", "tickets", "--max-steps", "1", "--batch-size", "4")
    first = run_cli(capsys, *args, "--name", "router-v1")
    assert first.code == 0, first.err
    run_id = run_id_from(first.out)
    shown = run_cli(capsys, "runs", "show", "router-v1")
    assert shown.code == 0 and run_id in shown.out
    answer = run_cli(capsys, "generate", "router-v1", "--prompt", "SSO-12 login loop", "--max-new-tokens", "3")
    assert answer.code == 0, answer.err
    evaluated = run_cli(capsys, "eval", "router-v1", "--max-new-tokens", "3", "--limit", "2")
    assert evaluated.code == 0, evaluated.err

    second = run_cli(capsys, *args, "--name", "router-v1")
    assert second.code == 0, second.err
    other_id = run_id_from(second.out)
    for command in (("runs", "show"), ("generate",), ("eval",)):
        extra = ("--prompt", "hi") if command == ("generate",) else ()
        ambiguous = run_cli(capsys, *command, "router-v1", *extra)
        err = " ".join(ambiguous.err.split())
        assert ambiguous.code == 2 and "2 runs are named 'router-v1'" in err and run_id in err and other_id in err, (command, err)


def test_the_adapter_names_the_base_model_as_given_and_holds_no_optimiser_state(capsys, home, tiny_model, tickets_file, tmp_path):
    named = tmp_path / "my-base-model"
    named.symlink_to(tiny_model)  # the name the user gives differs from the path it resolves to, as with the embedded model's cache
    run_id = train_tiny(capsys, named, tickets_file, "--max-steps", "2")
    run_dir = home / "runs" / run_id
    adapter = run_dir / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(named)  # as the user named it
    assert json.loads((run_dir / "run.json").read_text())["base_model_path"] == str(tiny_model.resolve())  # resolved, in run.json
    assert not (adapter / "trainer_state.pt").exists()
    assert all((folder / "trainer_state.pt").is_file() for folder in (run_dir / "checkpoints").iterdir())  # --resume still has it
    answer = run_cli(capsys, "generate", run_id, "--prompt", "GW-9 is slow", "--max-new-tokens", "3")
    assert answer.code == 0, answer.err  # the artefact still loads
