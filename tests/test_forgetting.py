"""Keeping general skills: the probe set, its intervals, and self-distilled replay (data.keep_general)."""

from __future__ import annotations

import json
import math

import pytest
import scipy.stats
from conftest import tickets_home

from tunesmith.cli.train import TrainFlags
from tunesmith.config import RunSpec, load_run_spec
from tunesmith.data.dataset import load_dataset
from tunesmith.eval.forgetting import CHECKS, load_probes, probe_drop, wilson_interval
from tunesmith.train.keep_general import cache_file, general_prompts, self_distilled

FLAGS = {name: None for name in TrainFlags.__dataclass_fields__} | {"skip_invalid": False, "dry_run": False, "nproc": 1}


def _rows(correct: list[int], prefix: str = "q") -> dict:
    rows = [{"id": f"{prefix}{i}", "category": "facts", "correct": bool(c)} for i, c in enumerate(correct)]
    return {"score": sum(correct) / len(correct), "rows": rows}


# ---------------------------------------------------------------- the probe set


def test_the_probe_set_is_large_varied_unique_and_checkable():
    probes = load_probes()
    assert len(probes) >= 200
    assert len({p["id"] for p in probes}) == len(probes)
    assert len({p["question"].strip().lower() for p in probes}) == len(probes)
    categories = {p["category"] for p in probes}
    assert len(categories) >= 5 and {"facts", "arithmetic", "instructions", "formatting", "reasoning", "language"} <= categories
    assert min(sum(p["category"] == c for p in probes) for c in categories) >= 20  # every category big enough to read on its own
    assert all(p["check"] in CHECKS for p in probes)


def test_general_prompts_for_replay_are_not_probe_questions():
    # Replaying probe questions would make the probe measure rehearsal, not what was kept.
    probes = {p["question"].strip().lower() for p in load_probes()}
    prompts = general_prompts()
    assert len(prompts) >= 100 and len({p["id"] for p in prompts}) == len(prompts)
    assert not probes & {p["prompt"].strip().lower() for p in prompts}


# ---------------------------------------------------------------- intervals


def test_wilson_interval_matches_the_formula_by_hand():
    # 120 right of 200 at 95%: centre (p + z²/2n) / (1 + z²/n), half-width z sqrt(p(1-p)/n + z²/4n²) / (1 + z²/n).
    z, n, p = scipy.stats.norm.ppf(0.975), 200, 0.6
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low, high = wilson_interval(120, 200)
    assert low == pytest.approx(centre - half, abs=1e-9) and high == pytest.approx(centre + half, abs=1e-9)
    assert wilson_interval(0, 50)[0] == 0.0 and 0.05 < wilson_interval(0, 50)[1] < 0.1  # never below 0, not a zero-width interval


def test_probe_drop_is_paired_seeded_and_centred_on_the_drop():
    base = _rows([1] * 60 + [0] * 40)
    tuned = _rows([1] * 40 + [0] * 20 + [0] * 40)  # 20 questions lost, none gained
    found = probe_drop(base, tuned)
    assert found["drop"] == pytest.approx(0.2) and found["regressed"] == 20 and found["improved"] == 0
    assert 0 < found["low"] < 0.2 < found["high"] < 0.35
    # The paired bootstrap of a difference of 0/1 scores: resampling 100 questions, each lost with share 0.2;
    # its spread is that of a binomial share, sqrt(0.2 * 0.8 / 100) = 0.04, so the 95% interval is about ±0.08.
    assert found["high"] - found["low"] == pytest.approx(2 * 1.96 * 0.04, abs=0.03)
    assert found["p_value"] == pytest.approx(2 * 0.5**20, rel=1e-6)  # exact McNemar: 20 discordant pairs, all one way
    assert probe_drop(base, tuned) == found  # seeded: the same interval every time
    # An unchanged model: no drop, and an interval that is exactly zero (every pair agrees).
    same = probe_drop(base, base)
    assert same["drop"] == 0 and same["low"] == 0 and same["high"] == 0 and same["p_value"] == 1.0


def test_probe_drop_pairs_questions_by_id_not_by_position():
    base = _rows([1, 1, 0, 0])
    tuned = {"rows": list(reversed(_rows([1, 1, 0, 0])["rows"]))}
    assert probe_drop(base, tuned)["drop"] == 0 and probe_drop(base, tuned)["high"] == 0
    with pytest.raises(Exception, match="share no question"):
        probe_drop(base, _rows([1, 1], prefix="other"))


# ---------------------------------------------------------------- the config default


def test_keep_general_is_on_by_default_at_the_measured_share_and_set_or_turned_off_by_the_flag_or_the_config():
    default = RunSpec.model_validate({"data": {"dataset": "x"}}).data.keep_general
    assert default is not None and default.fraction == pytest.approx(0.2)  # the share measured on the quickstart
    assert RunSpec.model_validate({"data": {"dataset": "x", "keep_general": {}}}).data.keep_general == default
    # A classifier has no answers to keep: the default is off there, and the resolved config says so.
    assert RunSpec.model_validate({"data": {"dataset": "x"}, "train": {"task": "classification"}}).data.keep_general is None
    assert RunSpec.model_validate({"data": {"dataset": "x", "keep_general": None}}).data.keep_general is None
    assert RunSpec.model_validate({"data": {"dataset": "x", "keep_general": False}}).data.keep_general is None
    # The command line: --keep-general 0 turns it off, another share sets the fraction.
    assert load_run_spec(None, {"data": {"dataset": "x"}}).data.keep_general.fraction == pytest.approx(0.2)
    off = TrainFlags(**{**FLAGS, "keep_general": 0.0}).overrides([])
    assert load_run_spec(None, {"data": {"dataset": "x"}, **off}).data.keep_general is None
    more = TrainFlags(**{**FLAGS, "keep_general": 0.4}).overrides([])
    assert load_run_spec(None, {"data": {"dataset": "x"}, **more}).data.keep_general.fraction == 0.4
    assert RunSpec.model_validate({"data": {"dataset": "x", "keep_general": {"fraction": 0.4}}}).data.keep_general.fraction == 0.4
    # A classifier has no text to keep: an explicit setting is refused.
    with pytest.raises(Exception, match="data.keep_general mixes in answers for causal_lm runs only"):
        RunSpec.model_validate({"data": {"dataset": "x", "keep_general": {"fraction": 0.2}}, "train": {"task": "classification"}})


# ---------------------------------------------------------------- self-distilled replay in a real run


@pytest.fixture(scope="module")
def replay_run(tmp_path_factory, tiny_model):
    workspace = tickets_home(tmp_path_factory.mktemp("keep-general"), 40)
    from tunesmith.train.recipe import train as run_training

    train = {"max_steps": 3, "batch_size": 4, "seed": 3}
    spec = RunSpec.model_validate({"model": {"name": str(tiny_model)}, "data": {"dataset": "tickets", "keep_general": {}}, "train": train})
    return workspace, run_training(spec, workspace).info.run_id


def test_self_distilled_replay_draws_only_from_the_base_models_answers_to_general_prompts(replay_run, tiny_model):
    workspace, run_id = replay_run
    keep = RunSpec.model_validate({"data": {"dataset": "x", "keep_general": {}}}).data.keep_general
    cached = cache_file(workspace.home, str(tiny_model), general_prompts(), keep)
    assert cached.is_file()  # generated once, in the workspace
    rows = [json.loads(line) for line in cached.read_text().splitlines()]
    prompts = {p["prompt"] for p in general_prompts()}
    assert rows and all(r["prompt"] in prompts for r in rows)
    examples = self_distilled(
        RunSpec.model_validate({"model": {"name": str(tiny_model)}, "data": {"dataset": "x"}}).model, str(tiny_model), keep, workspace.home
    )
    assert [e.messages[-1].content for e in examples] == [r["answer"] for r in rows]  # read back from the cache, not generated again
    tickets = {m.content for e in load_dataset(workspace, "tickets").splits["train"] for m in e.messages}
    assert not tickets & {m.content for e in examples for m in e.messages}  # no task data among them
    config = (workspace.run_dir(run_id) / "config.yaml").read_text()
    assert "keep_general:" in config and "fraction: 0.2" in config  # the run records that it replayed, and how much


def test_the_replay_draw_is_seeded_and_never_takes_task_examples(replay_run, tiny_model):
    from tunesmith.chat_template import encode_all
    from tunesmith.models.loading import load_tokenizer
    from tunesmith.train.loop import Items, Replay

    workspace, _ = replay_run
    spec = RunSpec.model_validate({"model": {"name": str(tiny_model)}, "data": {"dataset": "tickets", "keep_general": {}}})
    tokenizer = load_tokenizer(str(tiny_model))
    task, _ = encode_all(tokenizer, load_dataset(workspace, "tickets").splits["train"], 512, "assistant")
    general, _ = encode_all(tokenizer, self_distilled(spec.model, str(tiny_model), spec.data.keep_general, workspace.home), 512, "assistant")
    items = Items(task, [], [], [Replay("keep_general", general, 0.2, 7)])
    drawn = items.for_epoch(seed=0, epoch=1)[len(task) :]
    assert len(drawn) == 7 and all(any(d is g for g in general) for d in drawn)  # drawn from the general answers only
    assert not {tuple(d.input_ids) for d in drawn} & {tuple(t.input_ids) for t in task}
    same = Items(task, [], [], [Replay("keep_general", general, 0.2, 7)]).for_epoch(seed=0, epoch=1)[len(task) :]
    assert [d.input_ids for d in same] == [d.input_ids for d in drawn]  # same seed, same draw
    other = items.for_epoch(seed=1, epoch=1)[len(task) :]
    assert [d.input_ids for d in other] != [d.input_ids for d in drawn]


# ---------------------------------------------------------------- the base's distribution as the replay's target


@pytest.fixture(scope="module")
def lora_on_tiny(tiny_model):
    """The tiny model under LoRA with tunesmith's kernels, its adapters moved off zero so that it
    predicts unlike its base; and a task and a general example, encoded."""
    import torch

    from tunesmith.chat_template import encode_all
    from tunesmith.data.example import Example, Message
    from tunesmith.models.methods import apply_method, load_for_method
    from tunesmith.train import kernels

    spec = RunSpec.model_validate({"model": {"name": str(tiny_model)}, "data": {"dataset": "x"}, "train": {"method": "lora", "seed": 0}})
    model, tokenizer, device = load_for_method(spec.model, str(tiny_model), spec.train)
    torch.manual_seed(0)
    model = apply_method(model, spec.train)
    kernels.switch_on(model, device)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    pair = [
        Example(id="task", messages=[Message(role="user", content="printer on floor 2 is jammed"), Message(role="assistant", content='{"team": "it"}')]),
        Example(id="general", messages=[Message(role="user", content="What is two plus two?"), Message(role="assistant", content="Two plus two is four.")]),
    ]
    task, general = encode_all(tokenizer, pair, 512, "assistant")[0]
    return model, tokenizer, task, general


def _by_hand(model, item, distill: bool):
    """One example's summed loss from the full logits: cross-entropy on its trained tokens, or
    KL(base || tuned) there when it distils."""
    import torch
    import torch.nn.functional as F

    ids = torch.tensor([item.input_ids])
    trained = torch.tensor(item.labels[1:]) != -100
    with torch.no_grad():
        tuned = model(input_ids=ids).logits[0, :-1][trained].float()
        if not distill:
            return float(F.cross_entropy(tuned, torch.tensor(item.labels[1:])[trained], reduction="sum"))
        with model.disable_adapter():
            base = model(input_ids=ids).logits[0, :-1][trained].float()
    return float((F.softmax(base, -1) * (F.log_softmax(base, -1) - F.log_softmax(tuned, -1))).sum())


def test_a_distilled_example_costs_its_kl_to_the_base_in_every_layout_of_the_batch(lora_on_tiny):
    from dataclasses import replace

    import torch

    from tunesmith.chat_template import collate, collate_flat
    from tunesmith.train.batching import collate_packed
    from tunesmith.train.tasks.causal_lm import summed_loss

    model, tokenizer, task, general = lora_on_tiny
    distilled = replace(general, distill=True)
    expected = _by_hand(model, task, False) + _by_hand(model, general, True)
    assert _by_hand(model, general, True) > 1e-3  # the adapters moved the model: there is a divergence to pay
    layouts = {
        "padded": collate([task, distilled], tokenizer.pad_token_id),
        "packed": collate_packed([task, distilled], tokenizer.pad_token_id, 1024),
        "flat": collate_flat([task, distilled]),
    }
    for layout, tensors in layouts.items():
        assert tensors["distill"].sum() == len(general.input_ids), layout
        with torch.no_grad():
            loss, n_tokens = summed_loss(model, tensors)
        assert n_tokens == task.n_trained + general.n_trained, layout  # a distilled token weighs as much as a written one
        assert float(loss) == pytest.approx(expected, rel=1e-4), layout
    plain = collate([task, general], tokenizer.pad_token_id)
    assert "distill" not in plain  # without distilled examples, batches are as before
    with torch.no_grad():
        assert float(summed_loss(model, plain)[0]) == pytest.approx(_by_hand(model, task, False) + _by_hand(model, general, False), rel=1e-4)


def test_the_kl_pulls_only_the_adapters_and_is_zero_where_the_model_still_predicts_as_its_base(lora_on_tiny):
    from dataclasses import replace

    import torch

    from tunesmith.chat_template import collate
    from tunesmith.train.tasks.causal_lm import summed_loss

    model, tokenizer, _, general = lora_on_tiny
    tensors = collate([replace(general, distill=True)], tokenizer.pad_token_id)
    model.zero_grad()
    summed_loss(model, tensors)[0].backward()
    moved = [name for name, param in model.named_parameters() if param.grad is not None and param.grad.abs().sum() > 0]
    assert moved and all("lora_" in name for name in moved)
    model.zero_grad()
    with model.disable_adapter(), torch.no_grad():  # the tuned model is its base: nothing to pay
        assert float(summed_loss(model, tensors)[0]) == pytest.approx(0.0, abs=1e-4)


def test_the_base_distribution_target_is_refused_where_there_is_no_base_to_read():
    from tunesmith.errors import UserError
    from tunesmith.train.parallel.accel import check_spec

    keep = {"dataset": "x", "keep_general": {"target": "distribution"}}
    assert RunSpec.model_validate({"data": keep}).data.keep_general.target == "distribution"
    with pytest.raises(Exception, match="method full has none; use method lora, qlora or dora, or target answer"):
        RunSpec.model_validate({"data": keep, "train": {"method": "full"}})
    with pytest.raises(UserError, match="does not run on a model sharded with fsdp"):
        check_spec("fsdp", RunSpec.model_validate({"data": keep}))
    check_spec("fsdp", RunSpec.model_validate({"data": {"dataset": "x"}}))  # the greedy answers shard as any data does


def test_a_run_that_distils_from_its_base_resumes_exactly_and_records_the_target(replay_run, tiny_model):
    import torch
    from safetensors.torch import load_file

    from tunesmith.train.recipe import train as run_training
    from tunesmith.train.resume import resume
    from tunesmith.train.run.guards import Budget

    workspace, _ = replay_run  # its base model's general answers are cached there already
    data = {"dataset": "tickets", "keep_general": {"target": "distribution", "fraction": 0.4}}
    spec = RunSpec.model_validate({"model": {"name": str(tiny_model)}, "data": data, "train": {"max_steps": 6, "batch_size": 4, "lr": 3e-2, "seed": 3}})
    whole = run_training(spec, workspace)
    assert whole.info.status == "completed"
    assert "target: distribution" in (whole.run_dir / "config.yaml").read_text()
    stopped = run_training(spec, workspace, Budget(max_seconds=1e-3))  # any step takes longer: stops after step 1
    assert stopped.info.status == "stopped"
    finished = resume(workspace, stopped.run_dir)

    def steps(result):
        return [(row["step"], row["loss"]) for row in map(json.loads, (result.run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in row]

    assert finished.info.status == "completed" and [s for s, _ in steps(whole)] == list(range(1, 7))
    assert all(math.isfinite(loss) for _, loss in steps(whole))
    assert [s for s, _ in steps(finished)] == list(range(1, 7))
    assert all(abs(a - b) <= 1.01e-5 for (_, a), (_, b) in zip(steps(whole), steps(finished)))  # metrics.jsonl rounds to 5 decimals
    adapter_a, adapter_b = (load_file(str(r.run_dir / "adapter" / "adapter_model.safetensors")) for r in (whole, finished))
    assert all(torch.allclose(adapter_a[k], adapter_b[k], atol=1e-6, rtol=0) for k in adapter_a)


def test_data_given_on_the_command_line_keeps_the_configs_replay_settings(tmp_path, capsys):
    from clihelp import run_cli

    config = tmp_path / "run.yaml"
    config.write_text("data:\n  path: old.jsonl\n  keep_general: {fraction: 0.3, target: distribution}\ntrain: {method: full}\n")
    flags = TrainFlags(**{**FLAGS, "data": "my-data"})
    with pytest.raises(Exception, match="method full has none"):  # the config's keep_general is still read: refused, not dropped
        load_run_spec(config, flags.overrides([]))
    config.write_text("data:\n  path: old.jsonl\n  keep_general: {fraction: 0.3, target: distribution}\n")
    spec = load_run_spec(config, flags.overrides([]))
    assert (spec.data.dataset, spec.data.path) == ("my-data", None)  # --data replaced the config's source
    assert (spec.data.keep_general.fraction, spec.data.keep_general.target) == (0.3, "distribution")
    config.write_text("data:\n  keep_general: {fraction: 0.3, target: distribution}\ntrain: {method: full}\n")
    refused = run_cli(capsys, "train", "--data", "my-data", "--config", str(config))
    assert refused.code == 2 and "target distribution" in " ".join(refused.err.split()) and "Traceback" not in refused.err
