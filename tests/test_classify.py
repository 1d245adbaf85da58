"""train.task classification: a head on an encoder learns text/label data; eval reports accuracy,
macro-F1 and the confusion matrix on the test split."""

from __future__ import annotations

import json
import re

import pytest
from clihelp import run_cli
from conftest import classification_records, run_id_from, step_losses, validations


def prepare(capsys, path, name="classes"):
    result = run_cli(capsys, "data", "prepare", str(path), "--out", name, "--pii", "off", "--no-near-dedup")
    assert result.code == 0, result.err


def train(capsys, tmp_path, model, method, lr, epochs=4, batch_size=4):
    config = tmp_path / f"{method}.yaml"
    config.write_text(
        json.dumps(
            {
                "model": {"name": str(model)},
                "data": {"dataset": "classes"},
                "train": {"task": "classification", "method": method, "epochs": epochs, "lr": lr, "batch_size": batch_size},
            }
        )
    )
    result = run_cli(capsys, "train", "--config", str(config))
    assert result.code == 0, result.err
    # the closing line names the scores that chose the best step, not only the validation loss
    assert re.search(r"best at step \d+ \(epoch [\d.]+\), validation loss [\d.]+, accuracy [\d.]+, f1_macro [\d.]+", " ".join(result.err.split()))
    return run_id_from(result.out)


@pytest.mark.parametrize(("method", "lr"), [("full", 1e-3), ("lora", 2e-2)])
def test_classifier_trains_saves_and_eval_reports_accuracy_f1_and_confusion(method, lr, capsys, home, tiny_bert, classes_file, tmp_path):
    """Learning itself is shown on the real encoder (the slow test below): a random 32-wide BERT sits on
    a plateau for dozens of steps. Here: the run's records, the artefact, and that eval reloads the
    very model that was validated (same accuracy on the same split)."""
    prepare(capsys, classes_file)
    run_id = train(capsys, tmp_path, tiny_bert, method, lr)
    run_dir = home / "runs" / run_id
    info = json.loads((run_dir / "run.json").read_text())
    assert info["task"] == "classification" and info["labels"] == ["billing", "bug", "praise"]
    assert info["artefact"] == ("model" if method == "full" else "adapter")
    assert json.loads((run_dir / info["artefact"] / "labels.json").read_text()) == info["labels"]
    assert any(p.suffix == ".safetensors" for p in (run_dir / info["artefact"]).iterdir())
    losses = step_losses(run_dir)
    checked = validations(run_dir)
    assert len(checked) == 4 and all({"val_accuracy", "val_f1_macro"} <= set(r) for r in checked)
    if method == "full":
        per_epoch = len(losses) // 4
        assert sum(losses[-per_epoch:]) < sum(losses[:per_epoch]), losses  # the loss fell
    best = max(checked, key=lambda r: (r["val_f1_macro"], -r["val_loss"]))
    assert info["best_step"] == best["step"] and info["best_metrics"] == {"accuracy": best["val_accuracy"], "f1_macro": best["val_f1_macro"]}

    validated = run_cli(capsys, "eval", run_id, "--split", "validation")
    assert validated.code == 0, validated.err
    report = json.loads((run_dir / "eval" / "report.json").read_text())
    assert report["validation"]["tuned"]["metrics"]["accuracy"] == best["val_accuracy"]  # the saved model is the validated one
    assert report["validation"]["tuned"]["metrics"]["f1_macro"] == best["val_f1_macro"]

    result = run_cli(capsys, "eval", run_id)
    assert result.code == 0, result.err
    assert "confusion matrix" in result.out and "f1_macro" in result.out
    report = json.loads((run_dir / "eval" / "report.json").read_text())["test"]["tuned"]
    test_rows = [json.loads(line) for line in (run_dir / "eval" / "test-tuned.jsonl").read_text().splitlines()]
    correct = sum(r["prediction"] == r["reference"] for r in test_rows)
    assert report["metrics"]["accuracy"] == round(correct / len(test_rows), 4)
    matrix = report["confusion_matrix"]
    assert matrix["labels"] == info["labels"] and sum(map(sum, matrix["matrix"])) == len(test_rows)
    assert sum(matrix["matrix"][i][i] for i in range(3)) == correct
    assert 0.0 <= report["metrics"]["f1_macro"] <= 1.0 and "majority_class_accuracy" in report["metrics"]
    assert "Traceback" not in result.err and (run_dir / "report.html").is_file()

    chat = run_cli(capsys, "generate", run_id, "--prompt", "refund please")
    assert chat.code == 2 and "classifier" in chat.err


def test_classification_refuses_unlabelled_data_and_generation_methods(capsys, home, tiny_bert, tmp_path):
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"prompt": f"what is {i} plus {i}?", "completion": str(2 * i)}) + "\n" for i in range(30)))
    prepare(capsys, answers, "answers")
    config = tmp_path / "c.yaml"
    config.write_text(f"model: {{name: {tiny_bert}}}\ndata: {{dataset: answers}}\ntrain: {{task: classification, method: prompt_tuning}}\n")
    result = run_cli(capsys, "train", "--config", str(config))
    assert result.code == 2 and "train.method: train.task classification trains with full, lora, dora" in " ".join(result.err.split())
    config.write_text(f"model: {{name: {tiny_bert}}}\ndata: {{dataset: answers}}\ntrain: {{task: classification}}\n")
    result = run_cli(capsys, "train", "--config", str(config))
    assert result.code == 2 and "needs a label on every example" in " ".join(result.err.split()) and "Traceback" not in result.err


def test_classification_defaults_to_the_embedded_encoder():
    from tunesmith.config import EMBEDDED_ENCODER, RunSpec

    assert RunSpec.model_validate({"data": {"dataset": "x"}, "train": {"task": "classification"}}).model.name == EMBEDDED_ENCODER
    chosen = RunSpec.model_validate({"data": {"dataset": "x"}, "model": {"name": "my/encoder"}, "train": {"task": "classification"}})
    assert chosen.model.name == "my/encoder"
    with pytest.raises(Exception, match="data.replay mixes in examples for causal_lm runs only"):
        RunSpec.model_validate({"data": {"dataset": "x", "replay": {"dataset": "y"}}, "train": {"task": "classification"}})


@pytest.mark.slow
def test_minilm_classifier_beats_chance_in_a_few_steps(capsys, home, tmp_path):
    """The real embedded all-MiniLM-L6-v2, ~12 steps of 16 examples."""
    path = tmp_path / "classes.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in classification_records(150, 3)), encoding="utf-8")
    prepare(capsys, path)
    config = tmp_path / "minilm.yaml"
    config.write_text(
        json.dumps({"data": {"dataset": "classes"}, "train": {"task": "classification", "method": "full", "epochs": 2, "lr": 1e-4, "batch_size": 16}})
    )
    result = run_cli(capsys, "train", "--config", str(config))
    assert result.code == 0, result.err
    run_id = run_id_from(result.out)
    info = json.loads((home / "runs" / run_id / "run.json").read_text())
    assert info["base_model"] == "all-minilm-l6-v2"
    assert run_cli(capsys, "eval", run_id).code == 0
    metrics = json.loads((home / "runs" / run_id / "eval" / "report.json").read_text())["test"]["tuned"]["metrics"]
    assert metrics["accuracy"] > 0.6 and metrics["f1_macro"] > 0.5  # chance is 1/3


def test_classify_labels_one_text_and_a_file_of_texts(capsys, home, tiny_bert, classes_file, tmp_path):
    prepare(capsys, classes_file)
    run_id = train(capsys, tmp_path, tiny_bert, "full", 1e-3, epochs=1)
    one = run_cli(capsys, "classify", run_id, "--text", "I was charged twice for my invoice")
    assert one.code == 0, one.err
    label, probability = one.out.strip().split("\t")
    assert label in ("billing", "bug", "praise") and 1 / 3 <= float(probability) <= 1.0

    texts = tmp_path / "texts.txt"
    texts.write_text("the app crashes\n\nlove it, great work\nrefund please\n")
    many = run_cli(capsys, "classify", run_id, "--file", str(texts))
    assert many.code == 0, many.err
    rows = [json.loads(line) for line in many.out.splitlines()]
    assert [r["text"] for r in rows] == ["the app crashes", "love it, great work", "refund please"]
    assert all(set(r["probabilities"]) == {"billing", "bug", "praise"} and abs(sum(r["probabilities"].values()) - 1) < 1e-3 for r in rows)
    assert all(r["probability"] == max(r["probabilities"].values()) and r["label"] == max(r["probabilities"], key=r["probabilities"].get) for r in rows)
    from_jsonl = run_cli(capsys, "classify", run_id, "--file", str(classes_file))
    assert from_jsonl.code == 0 and len(from_jsonl.out.splitlines()) == len(classes_file.read_text().splitlines())

    assert run_cli(capsys, "classify", run_id).code == 2  # nothing to classify
    generated = run_cli(capsys, "generate", run_id, "--prompt", "refund please")
    assert generated.code == 2 and f"tunesmith classify {run_id} --text" in " ".join(generated.err.split())
