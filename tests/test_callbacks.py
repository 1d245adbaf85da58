"""Probes during training: generation metrics on a validation sample every N steps, next to the loss."""

from __future__ import annotations

import pytest
import torch
from clihelp import run_cli
from conftest import read_metrics, run_id_from, step_losses, train_steps


def test_generation_eval_records_appear_every_n_steps_with_eval_metrics(capsys, home, tiny_model, tickets_file, tmp_path):
    assert run_cli(capsys, "data", "prepare", str(tickets_file), "--out", "tickets", "--no-pii-ner").code == 0
    config = tmp_path / "run.yaml"
    config.write_text(
        f"model: {{name: {tiny_model}}}\ndata: {{dataset: tickets}}\n"
        "train: {epochs: 2, batch_size: 4, lr: 3.0e-2, generation_eval: {every_steps: 5, sample_size: 4, max_new_tokens: 8}}\n"
    )
    result = run_cli(capsys, "train", "--config", str(config), "--report-to", "tensorboard")
    assert result.code == 0, result.err
    run_dir = home / "runs" / run_id_from(result.out)
    records = read_metrics(run_dir)
    total = max(r["step"] for r in records)
    probes = [r for r in records if "gen/exact_match" in r]
    assert [r["step"] for r in probes] == list(range(5, total + 1, 5)) and len(probes) >= 3
    for record in probes:
        assert record["gen/n"] == 4.0
        assert 0.0 <= record["gen/exact_match"] <= 1.0 and 0.0 <= record["gen/valid_json"] <= 1.0
        assert {"gen/field_accuracy.team", "gen/field_accuracy.priority", "gen/field_accuracy.product"} <= set(record)
        assert "loss" not in record
    # the probe record follows the loss record of its step in metrics.jsonl
    for record in probes:
        index = records.index(record)
        assert records[index - 1]["step"] == record["step"]
    # the loss kept falling around the probes: generation switched the model to eval mode and back
    losses = step_losses(run_dir)
    assert sum(losses[-3:]) < sum(losses[:3])

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("gen/valid_json")] == [(r["step"], pytest.approx(r["gen/valid_json"])) for r in probes]


def test_the_probe_scores_like_tunesmith_eval_on_the_same_examples(tiny_model):
    from conftest import tiny_records

    from tunesmith.config import EvalSpec, GenerationEvalSpec, ModelSpec
    from tunesmith.data.example import Example
    from tunesmith.eval.evaluate import evaluate_model
    from tunesmith.models.loading import load_model
    from tunesmith.train.run.probes import GenerationProbe, Probes

    model, tokenizer, _ = load_model(ModelSpec(name=str(tiny_model)))
    examples = [Example(id=str(i), messages=r["messages"], label=r.get("label")) for i, r in enumerate(tiny_records(12))]
    probe = GenerationProbe(examples, GenerationEvalSpec(every_steps=3, sample_size=5, max_new_tokens=6), batch_size=4, seed=0)
    assert len(probe.examples) == 5
    model.train()
    tokenizer.padding_side = "right"
    assert Probes([probe]).run(model, tokenizer, 4, 0.5) == []  # not due
    [record] = Probes([probe]).run(model, tokenizer, 6, 1.0)
    assert model.training and tokenizer.padding_side == "right"  # handed back as found
    _, expected = evaluate_model(model, tokenizer, probe.examples, EvalSpec(max_new_tokens=6, batch_size=4), "tuned")
    got = {k.removeprefix("gen/"): v for k, v in record.items() if k.startswith("gen/")}
    assert record["step"] == 6 and record["epoch"] == 1.0
    # eval also reports what the probe skips to stay cheap (reference perplexity, the overall field score)
    shared = set(got) - {"examples_per_s"}
    assert shared <= set(expected) and {"exact_match", "valid_json", "n"} <= shared
    assert {k: got[k] for k in shared} == {k: expected[k] for k in shared}


class WeightNormProbe:
    """Another kind of probe plugged in the same way: the norm of the trainable weights."""

    name = "weights"
    every_steps = 2

    def __call__(self, model, tokenizer, step):
        return {"norm": float(torch.sqrt(sum((p.detach() ** 2).sum() for p in model.parameters() if p.requires_grad)))}


def test_any_probe_with_the_same_shape_plugs_in(tiny_model):
    from tunesmith.config import ModelSpec
    from tunesmith.models.loading import load_model
    from tunesmith.train.run.probes import Probes

    model, tokenizer, _ = load_model(ModelSpec(name=str(tiny_model)))
    probes = Probes([WeightNormProbe()])
    records = [r for step in range(1, 7) for r in probes.run(model, tokenizer, step, step / 6)]
    assert [r["step"] for r in records] == [2, 4, 6] and all(r["weights/norm"] > 0 for r in records)


def test_generation_eval_without_validation_answers_is_a_clear_error():
    from tunesmith.config import GenerationEvalSpec
    from tunesmith.errors import UserError
    from tunesmith.train.run.probes import GenerationProbe

    with pytest.raises(UserError, match="train.generation_eval"):
        GenerationProbe([], GenerationEvalSpec(every_steps=1), batch_size=4, seed=0)


def test_the_forgetting_probe_runs_during_training_next_to_the_loss(capsys, home, tiny_model, tickets_file, tmp_path):
    assert run_cli(capsys, "data", "prepare", str(tickets_file), "--out", "tickets", "--no-pii-ner").code == 0
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {{name: {tiny_model}}}\ndata: {{dataset: tickets}}\ntrain: {{max_steps: 4, batch_size: 4, forgetting_every_steps: 2}}\n")
    result = run_cli(capsys, "train", "--config", str(config))
    assert result.code == 0, result.err
    run_dir = home / "runs" / run_id_from(result.out)
    probes = [r for r in read_metrics(run_dir) if "forgetting/probe_score" in r]
    assert [r["step"] for r in probes] == [2, 4]
    for record in probes:
        assert 0.0 <= record["forgetting/probe_score"] <= 1.0
        assert {"forgetting/probe.facts", "forgetting/probe.arithmetic", "forgetting/probe.instructions", "forgetting/probe.formatting"} <= set(record)
    assert [r["step"] for r in train_steps(run_dir)] == [1, 2, 3, 4]


def test_forgetting_probe_is_refused_for_classification():
    from tunesmith.config import TrainSpec, validate_spec
    from tunesmith.errors import ProblemList

    with pytest.raises(ProblemList) as caught:
        validate_spec(TrainSpec, {"task": "classification", "method": "full", "forgetting_every_steps": 5}, "test")
    assert "forgetting_every_steps" in " ".join(caught.value.problems)
