"""Estimates before training: tokens, steps, time, memory and cost, without creating a run."""

from __future__ import annotations

import json
import math
import re
import sqlite3

import pytest
import torch
from clihelp import run_cli
from conftest import read_metrics, run_id_from


def _row(out: str, label: str) -> str:
    line = next(line for line in out.splitlines() if label in line)
    return line.split(label, 1)[1].replace("│", "").strip()


def _first_int(text: str) -> int:
    return int(re.search(r"[\d,]+", text).group().replace(",", ""))


def _registry_counts(home) -> dict[str, int]:
    db = home / "registry.db"
    if not db.exists():
        return {}
    with sqlite3.connect(db) as conn:
        tables = [r[0] for r in conn.execute("select name from sqlite_master where type='table'")]
        return {t: conn.execute(f"select count(*) from {t}").fetchone()[0] for t in tables}


def test_dry_run_prints_the_estimate_and_creates_nothing_then_the_run_takes_those_steps(capsys, home, tiny_model, tickets_file):
    from transformers import AutoTokenizer

    from tunesmith.data.dataset import load_dataset
    from tunesmith.workspace import Workspace

    assert run_cli(capsys, "data", "prepare", str(tickets_file), "--out", "tickets").code == 0
    registry_before = _registry_counts(home)
    # --keep-general 0: the task's own examples only, so the counts below are the split's
    args = ("train", "--model", str(tiny_model), "--data", "tickets", "--epochs", "3", "--batch-size", "4", "--keep-general", "0")
    dry = run_cli(capsys, *args, "--price-per-hour", "3.6", "--dry-run")
    assert dry.code == 0, dry.err
    for label in ("tokens per epoch", "optimizer steps", "estimated time", "peak memory", "estimated cost"):
        assert label in dry.out, label
    assert list((home / "runs").iterdir()) == [] and _registry_counts(home) == registry_before

    # Tokens are counted after the chat template: the tokenizer's own rendering gives the same total.
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    train_split = load_dataset(Workspace.from_env(), "tickets").splits["train"]
    rendered = sum(
        len(tokenizer.apply_chat_template([m.model_dump(exclude={"weight"}) for m in e.messages], tokenize=True, return_dict=False)) for e in train_split
    )
    assert _first_int(_row(dry.out, "tokens per epoch")) == rendered
    steps = _first_int(_row(dry.out, "optimizer steps"))
    assert steps == 3 * -(-len(train_split) // 4)
    shown = _row(dry.out, "estimated time").split("(")[0]  # "48 s", "2 min 05 s" or "1 h 02 min"
    seconds = sum(int(n) * {"h": 3600, "min": 60, "s": 1}[unit] for n, unit in re.findall(r"(\d+) (h|min|s)\b", shown))
    cost = float(re.search(r"([\d.]+) at 3.6", _row(dry.out, "estimated cost")).group(1))
    assert cost == pytest.approx(seconds / 3600 * 3.6, abs=0.01 + 60 / 3600 * 3.6 * (seconds >= 7200))
    assert float(re.search(r"([\d.]+) GiB", _row(dry.out, "peak memory")).group(1)) > 0.05  # the process holds torch and the model

    run = run_cli(capsys, *args)
    assert run.code == 0, run.err
    run_dir = home / "runs" / run_id_from(run.out)
    assert max(r["step"] for r in read_metrics(run_dir)) == steps
    saved = json.loads((run_dir / "estimate.json").read_text())
    assert saved["total_steps"] == steps and saved["tokens_per_epoch"] == rendered
    assert "optimizer steps" in run.err  # train prints the same table before it starts


def test_dry_run_counts_the_default_general_replay_as_the_run_mixes_it_in(capsys, home, tiny_model, tickets_file):
    from tunesmith.data.dataset import load_dataset
    from tunesmith.train.settings import replay_count
    from tunesmith.workspace import Workspace

    assert run_cli(capsys, "data", "prepare", str(tickets_file), "--out", "tickets").code == 0
    args = ("train", "--model", str(tiny_model), "--data", "tickets", "--epochs", "1", "--batch-size", "4")
    dry = run_cli(capsys, *args, "--dry-run")
    assert dry.code == 0, dry.err
    n_train = len(load_dataset(Workspace.from_env(), "tickets").splits["train"])
    replayed = replay_count(n_train, 0.2)  # keep_general's default share
    assert replayed > 0 and _first_int(_row(dry.out, "examples")) == n_train + replayed
    steps = _first_int(_row(dry.out, "optimizer steps"))
    assert steps == -(-(n_train + replayed) // 4)
    assert list((home / "runs").iterdir()) == []
    assert list((home / "cache" / "keep-general").glob("*.jsonl")), "the base model's answers are cached for the run"

    run = run_cli(capsys, *args)
    assert run.code == 0, run.err
    assert max(r["step"] for r in read_metrics(home / "runs" / run_id_from(run.out))) == steps


def test_dry_run_on_a_file_registers_no_dataset_and_counts_truncated_tokens(capsys, home, tiny_model, tickets_file, tmp_path):
    from transformers import AutoTokenizer

    from tunesmith.config import PrepareSpec
    from tunesmith.data.prepare import LengthLimit, run_steps

    config = tmp_path / "run.yaml"
    # keep_general off: the counts below are the file's own examples
    config.write_text(
        f"model: {{name: {tiny_model}}}\ndata: {{path: {tickets_file}, keep_general: false}}\ntrain: {{batch_size: 8, grad_accum: 2, max_seq_len: 140, epochs: 1}}\n"
    )
    dry = run_cli(capsys, "train", "--config", str(config), "--dry-run")
    assert dry.code == 0, dry.err
    assert list((home / "runs").iterdir()) == [] and list((home / "datasets").iterdir()) == []
    assert _registry_counts(home).get("datasets", 0) == 0 and _registry_counts(home).get("runs", 0) == 0

    # Expected from the tokenizer directly: each example cut to 140 tokens; those whose prompt
    # alone fills 140 have nothing to learn and are dropped, as the trainer drops them.
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    lengths = []
    # the split the run would make: examples over max_seq_len kept out of validation and test
    prepared = run_steps(tickets_file, None, 0, (0.8, 0.1, 0.1), PrepareSpec(), tmp_path, LengthLimit(model=str(tiny_model), max_seq_len=140))
    for example in prepared.rows.examples(prepared.splits["train"]):
        messages = [m.model_dump(exclude={"weight"}) for m in example.messages]
        prompt = len(tokenizer.apply_chat_template(messages[:-1], tokenize=True, add_generation_prompt=True, return_dict=False))
        full = len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False))
        lengths.append((prompt, full))
    kept = [min(full, 140) for prompt, full in lengths if prompt < 140]
    assert 0 < len(kept) < len(lengths) and any(full > 140 for _, full in lengths)
    assert _first_int(_row(dry.out, "tokens per epoch")) == sum(kept)
    assert _row(dry.out, "examples").strip().startswith(f"{len(kept)} ({len(lengths) - len(kept)} dropped")
    steps = _first_int(_row(dry.out, "optimizer steps"))
    assert steps == math.ceil(math.ceil(len(kept) / 8) / 2)  # batches of 8, two per optimizer step
    assert "give --price-per-hour" in dry.out


def test_calibration_leaves_the_weights_and_the_seed_as_they_were(tiny_model):
    from conftest import tiny_records

    from tunesmith.chat_template import encode_all
    from tunesmith.config import ModelSpec, TrainSpec
    from tunesmith.data.example import Example
    from tunesmith.models.loading import load_model
    from tunesmith.models.methods import apply_method
    from tunesmith.train.run.estimate import estimate_training
    from tunesmith.train.tasks.causal_lm import CAUSAL_LM

    cfg = TrainSpec(method="full", lr=1e-4, batch_size=4, weight_decay=0.1, price_per_hour=2.0)
    model, tokenizer, device = load_model(ModelSpec(name=str(tiny_model)))
    model = apply_method(model, cfg)
    examples = [Example(id=str(i), messages=r["messages"]) for i, r in enumerate(tiny_records(30))]
    items, _ = encode_all(tokenizer, examples, cfg.max_seq_len, cfg.train_on)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    estimate = estimate_training(model, tokenizer, device, cfg, items[:24], items[24:], objective=CAUSAL_LM)
    assert torch.equal(torch.rand(3), expected_draw)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert all(p.grad is None for p in model.parameters())
    assert estimate.total_steps == 2 * 6 and estimate.validations == 2
    assert estimate.seconds_per_token > 0 and estimate.validation_seconds_per_token > 0
    assert estimate.cost == pytest.approx(estimate.total_seconds / 3600 * 2.0, abs=1e-3)
