"""Smaller gaps found by trying what a careless user types: each exits 2 with what and how to fix,
never a traceback and never silently doing something else."""

from __future__ import annotations

import json

import pytest
from clihelp import run_cli


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def usage_error(result) -> bool:
    return result.code == 2 and "Traceback" not in result.err


def test_train_data_that_is_a_file_is_read_as_one(home, tmp_path, tiny_model, capsys):
    import pandas as pd
    from conftest import tiny_records

    parquet = tmp_path / "tickets.parquet"
    pd.DataFrame([{"prompt": m["messages"][-2]["content"], "completion": m["messages"][-1]["content"]} for m in tiny_records(30)]).to_parquet(parquet)
    result = run_cli(capsys, "train", "--data", str(parquet), "--model", str(tiny_model), "--dry-run")
    assert result.code == 0, result.err
    missing = run_cli(capsys, "train", "--data", str(tmp_path / "nowhere.parquet"), "--dry-run")
    assert usage_error(missing) and "no such file" in missing.err and "nowhere.parquet" in missing.err


def test_a_name_with_a_trailing_newline_is_refused(home, tickets_file, capsys):
    result = run_cli(capsys, "data", "prepare", str(tickets_file), "--out", "tickets\n", "--pii", "off", "--no-near-dedup")
    assert usage_error(result) and "not a valid name" in result.err
    assert not any((home / "datasets").glob("tickets*"))


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("train.weight_decay", ".inf"),
        ("train.max_grad_norm", ".nan"),
        ("train.price_per_hour", ".inf"),
        ("train.warmup_ratio", ".nan"),
    ],
)
def test_config_numbers_must_be_finite(home, tmp_path, capsys, setting, value):
    section, field = setting.split(".")
    config = tmp_path / "run.yaml"
    config.write_text(f"data: {{dataset: d}}\n{section}: {{{field}: {value}}}\n", encoding="utf-8")
    result = run_cli(capsys, "train", "--config", str(config), "--dry-run")
    assert usage_error(result) and setting in result.err and "finite" in result.err, result.err


@pytest.mark.parametrize("flag", ["--max-time", "--price-per-hour"])
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_budget_numbers_must_be_finite(home, capsys, flag, value):
    result = run_cli(capsys, "train", "--data", "d", flag, value, "--dry-run")
    assert usage_error(result) and flag in result.err and "finite" in result.err, result.err


def test_a_nan_label_is_refused_with_its_line(tmp_path, capsys):
    path = tmp_path / "classes.jsonl"
    path.write_text('{"text": "refund please", "label": "billing"}\n{"text": "it crashes", "label": NaN}\n', encoding="utf-8")
    result = run_cli(capsys, "data", "validate", str(path), "--json")
    assert result.code == 2
    errors = json.loads(result.out)["errors"]
    assert [e["line"] for e in errors] == [2] and "'label'" in errors[0]["message"]


def test_score_out_naming_an_existing_file(tmp_path, capsys):
    refs = _write_jsonl(tmp_path / "refs.jsonl", [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}])
    preds = _write_jsonl(tmp_path / "preds.jsonl", [{"prediction": "a"}])
    existing = tmp_path / "report.txt"
    existing.write_text("keep me", encoding="utf-8")
    result = run_cli(capsys, "score", str(preds), "-r", str(refs), "--out", str(existing))
    assert usage_error(result) and str(existing) in result.err
    assert existing.read_text(encoding="utf-8") == "keep me"


def test_a_home_that_cannot_be_written_is_named(monkeypatch, capsys):
    monkeypatch.setenv("TUNESMITH_HOME", "/sys/tunesmith-home")  # read-only for root too
    result = run_cli(capsys, "runs", "list")
    assert usage_error(result) and "/sys/tunesmith-home" in result.err and "TUNESMITH_HOME" in result.err


def test_quickstart_with_zero_epochs_is_a_usage_error(home, capsys):
    result = run_cli(capsys, "quickstart", "--epochs", "0")
    assert usage_error(result) and "--epochs" in result.err
    assert not (home / "demo").exists()  # refused before anything was written
