"""Configs and flags: bad input exits 2 naming the field, never a traceback; every example config loads."""

from __future__ import annotations

from pathlib import Path

import pytest
from clihelp import run_cli

from tunesmith.config import RunSpec, load_run_spec

EXAMPLES = sorted((Path(__file__).parents[1] / "examples").glob("*.yaml"))


def test_there_are_example_configs():
    assert len(EXAMPLES) >= 2


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_config_loads_and_names_its_command(path):
    assert isinstance(load_run_spec(path), RunSpec)
    assert "tunesmith " in path.read_text().splitlines()[1]  # headed by the command that runs it


def test_all_config_problems_are_reported_at_once_with_field_paths(tmp_path, capsys, home):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {dataset: x}\ntrain: {lrr: 0.1, epochs: zero, method: sgd}\n")
    result = run_cli(capsys, "train", "--config", str(bad))
    assert result.code == 2
    assert "Traceback" not in result.err
    for expected in ("train.lrr: unknown setting", "train.epochs:", "train.method:"):
        assert expected in result.err


def test_bad_flag_value_exits_2(capsys, home):
    result = run_cli(capsys, "train", "--data", "x", "--lr", "-1")
    assert result.code == 2 and "train.lr" in result.err and "Traceback" not in result.err


def test_yaml_syntax_error_names_the_line(tmp_path, capsys, home):
    bad = tmp_path / "broken.yaml"
    bad.write_text("data:\n  dataset: x\ntrain: [unclosed\n")
    result = run_cli(capsys, "train", "--config", str(bad))
    assert result.code == 2 and f"{bad}:" in result.err


def test_full_fine_tuning_with_a_lora_learning_rate_is_refused():
    with pytest.raises(Exception, match="far too high for full fine-tuning"):
        RunSpec.model_validate({"data": {"dataset": "x"}, "train": {"method": "full", "lr": 1e-2}})


def test_missing_data_file_and_bad_lines_exit_2(tmp_path, capsys, home):
    assert run_cli(capsys, "data", "prepare", str(tmp_path / "nope.jsonl")).code == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q", "completion": "a"}\n{oops\n')
    result = run_cli(capsys, "data", "prepare", str(bad))
    assert result.code == 2 and f"{bad}:2" in result.err and "Traceback" not in result.err


def test_dataset_name_cannot_escape_the_workspace(tmp_path, capsys, home, tickets_file):
    result = run_cli(capsys, "data", "prepare", str(tickets_file), "--out", "../../etc")
    assert result.code == 2 and "not a valid name" in result.err
    assert not (home.parent.parent / "etc").exists()


def test_usage_errors_exit_2(capsys):
    assert run_cli(capsys, "train", "--epochs", "many").code == 2
    assert run_cli(capsys, "no-such-command").code == 2


@pytest.mark.parametrize(
    ("command", "mentions"),
    [
        (["quickstart"], "--epochs"),
        (["data", "prepare"], "--format"),
        (["train"], "--method"),
        (["eval"], "--compare-base"),
        (["generate"], "--prompt"),
        (["chat"], "--system"),
        (["runs", "list"], "dataset version"),
        (["runs", "show"], "run id"),
    ],
)
def test_every_command_has_help(capsys, command, mentions):
    result = run_cli(capsys, *command, "--help")
    assert result.code == 0 and mentions in result.out
