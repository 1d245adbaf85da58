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


def test_an_unknown_setting_is_reported_beside_the_missing_data(tmp_path, capsys, home):
    config = tmp_path / "c.yaml"
    config.write_text("train: {lrr: 0.1}\n")
    result = run_cli(capsys, "train", "--config", str(config))
    assert result.code == 2 and "Traceback" not in result.err
    assert "train.lrr: unknown setting" in result.err
    assert "data: no data given" in result.err and "--data NAME_OR_FILE" in result.err


def test_flag_problems_are_listed_with_the_config_file_ones(tmp_path, capsys, home):
    config = tmp_path / "c.yaml"
    config.write_text("train: {lrr: 0.1}\nmodel: {nme: x}\n")
    result = run_cli(capsys, "train", "--config", str(config), "--epochs", "many", "--method", "sgd", "--data", str(tmp_path / "nowhere.jsonl"))
    assert result.code == 2 and "Traceback" not in result.err
    err = " ".join(result.err.split())
    for expected in (
        "train.lrr: unknown setting",
        "model.nme: unknown setting",
        "--epochs 'many' is not a whole number",
        "train.method: Input should be",
        "--data: no such file",
        "nowhere.jsonl",
    ):
        assert expected in err
    assert "no data given" not in err  # --data was given, just wrong


def test_model_without_data_reports_the_missing_data_and_the_other_flags(capsys, home):
    result = run_cli(capsys, "train", "--model", "smollm2-135m-instruct", "--method", "sgd", "--lr", "fast")
    assert result.code == 2 and "Traceback" not in result.err
    err = " ".join(result.err.split())
    for expected in ("data: no data given", "train.method: Input should be", "--lr 'fast' is not a number"):
        assert expected in err


def test_dotted_overrides_with_unknown_keys_are_all_reported(tmp_path):
    from tunesmith.errors import ProblemList

    config = tmp_path / "c.yaml"
    config.write_text("eval: 3\n")
    with pytest.raises(ProblemList) as caught:
        load_run_spec(config, {"train.lrr": 0.1, "model.nme": "x", "eval.limit": 5, "data.dataset": "tickets", "train.lr": None})
    problems = caught.value.problems
    assert any(p.startswith("train.lrr: unknown setting") for p in problems)
    assert any(p.startswith("model.nme: unknown setting") for p in problems)
    assert any(p.startswith("eval.limit: cannot be set, eval is not a section") for p in problems)
    assert not any(p.startswith("data") for p in problems)  # data.dataset was set by its override
    assert "c.yaml and the command-line flags" in str(caught.value)


def test_a_scalar_section_with_a_flag_for_it_exits_2(tmp_path, capsys, home):
    config = tmp_path / "c.yaml"
    config.write_text("data: {dataset: x}\ntrain: 5\n")
    result = run_cli(capsys, "train", "--config", str(config), "--lr", "0.01")
    assert result.code == 2 and "Traceback" not in result.err
    assert "train.lr: cannot be set, train is not a section" in " ".join(result.err.split())


def test_a_missing_config_file_is_reported_with_the_bad_flags(tmp_path, capsys, home):
    result = run_cli(capsys, "train", "--config", str(tmp_path / "none.yaml"), "--epochs", "many")
    assert result.code == 2 and "Traceback" not in result.err
    assert "no such config file" in result.err and "--epochs 'many'" in result.err


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


@pytest.mark.parametrize("words", [["eval", "nosuch-run"], ["eval", "run", "nosuch-run"], ["eval", "nosuch-run", "--compare-base"]])
def test_eval_reads_its_first_word_as_a_run_unless_it_names_a_subcommand(capsys, home, words):
    """`eval RUN` and `eval run RUN` are one command (the eval group resolves it, nothing rewrites argv)."""
    result = run_cli(capsys, *words)
    assert result.code == 2 and "no run 'nosuch-run'" in result.err and "Traceback" not in result.err


@pytest.mark.parametrize(
    ("words", "usage"),
    [(["eval", "judge"], "tunesmith eval judge"), (["eval", "review-import"], "tunesmith eval review-import"), (["eval", "score"], "tunesmith eval score")],
)
def test_eval_subcommands_are_commands_of_the_eval_group(capsys, home, words, usage):
    result = run_cli(capsys, *words)
    assert result.code == 2 and "Missing" in result.err + result.out and usage in result.err + result.out
