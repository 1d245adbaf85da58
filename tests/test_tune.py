"""`tunesmith tune`: the search finds the learning rate where it is known, prunes bad trials and says so,
never reads the test split but for the best trial, resumes a killed study without redoing trials, runs
trials in parallel processes, and refuses a bad space file naming the field. Tiny model, ~10 steps a trial."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from clihelp import SRC, run_cli
from conftest import tickets_home, train_steps

MAX_STEPS = 10
LONG_TRIAL_STEPS = 500


def write_config(folder: Path, tiny_model: Path, **train) -> Path:
    """A run config on the `tickets` dataset: 10 steps of 4 examples, a validation every half epoch (5 steps)."""
    import yaml

    config = folder / "run.yaml"
    settings = {"max_steps": MAX_STEPS, "batch_size": 4, "evals_per_epoch": 2, "lora": {"r": 8}, **train}
    config.write_text(yaml.safe_dump({"model": {"name": str(tiny_model)}, "data": {"dataset": "tickets"}, "train": settings}), encoding="utf-8")
    return config


def lr_only(folder: Path, low: float = 1e-5, high: float = 1.0) -> Path:
    space = folder / "space.yaml"
    space.write_text(f"use_defaults: false\nparams:\n  train.lr: {{low: {low}, high: {high}, log: true}}\n", encoding="utf-8")
    return space


def registry_rows(home: Path, sql: str, *args) -> list[tuple]:
    with sqlite3.connect(home / "registry.db") as db:
        return db.execute(sql, args).fetchall()


def run_json(home: Path, run_id: str) -> dict:
    return json.loads((home / "runs" / run_id / "run.json").read_text())


# ---------------------------------------------------------------- what the search finds, prunes and reads


@pytest.mark.slow
def test_search_finds_the_learning_rate_decade_prunes_and_reads_test_only_for_the_best(tmp_path, tiny_model, capsys, monkeypatch):
    """On the tiny ticket task at 10 steps, validation loss against lr (measured): 1e-5 6.64, 1e-4 6.58,
    1e-3 6.03, 1e-2 4.19, 3e-2 3.77, 1e-1 5.13, 1.0 5.06: too low learns nothing, too high overshoots;
    the best decade is [1e-2, 1e-1). The search over [1e-5, 1] (log) must land there."""
    import tunesmith

    home = tmp_path / "home"
    workspace = tickets_home(home, 30)
    result = tunesmith.tune(write_config(tmp_path, tiny_model), trials=8, space=lr_only(tmp_path), name="lr", workspace=workspace)
    report = result.best
    assert 1e-2 <= report.best_params["train.lr"] < 1e-1, report.rows

    # a pruned trial stopped early, and says so in the table, run.json and the registry
    pruned = [r for r in report.rows if r["state"] == "pruned"]
    assert pruned, f"no trial was pruned: {report.rows}"
    for row in pruned:
        info = run_json(home, row["run_id"])
        assert info["status"] == "pruned" and info["study"] == {"name": "lr", "trial": row["trial"]}
        assert "pruned by study lr" in info["stop_reason"]
        assert len(train_steps(home / "runs" / row["run_id"])) < MAX_STEPS
        assert registry_rows(home, "SELECT status FROM runs WHERE id = ?", row["run_id"]) == [("pruned",)]
    # every trial is a registered run that names its study
    for row in report.rows:
        assert run_json(home, row["run_id"])["study"] == {"name": "lr", "trial": row["trial"]}

    # the test split was scored once, for the best trial's run only; every other run has no evaluation at all
    scored = registry_rows(home, "SELECT run_id, split FROM evaluations")
    assert scored == [(report.best_run, "test")]
    assert report.test["run_id"] == report.best_run and "exact_match" in report.test["metrics"]
    assert not any((home / "runs" / r["run_id"] / "eval").exists() for r in report.rows if r["run_id"] != report.best_run)

    # tune list and tune show, as a user runs them
    monkeypatch.setenv("TUNESMITH_HOME", str(home))
    listed = run_cli(capsys, "tune", "list")
    assert listed.code == 0 and "lr" in listed.out and "8/8" in listed.out, listed.out + listed.err
    shown = run_cli(capsys, "tune", "show", "lr")
    assert shown.code == 0, shown.err
    assert "pruned" in shown.out and f"best: trial {report.best_trial}" in shown.out
    assert "test split (scored once, for the best trial only" in shown.out
    page = (home / "tune" / "lr" / "report.html").read_text()
    assert page.count("<img") == 1 and "optimisation history" in page  # importance needs 2 parameters: said so
    assert "parameter importance needs at least" in page


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tunesmith", *args], env={**os.environ, "PYTHONPATH": str(SRC), **env}, capture_output=True, text=True, timeout=300
    )


# ---------------------------------------------------------------- a killed study resumes


def _trials(home: Path, study: str):
    import optuna

    storage = optuna.storages.RDBStorage(f"sqlite:///{home / 'tune.db'}")
    return optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)


def _study_exists(home: Path, study: str) -> bool:
    """Read with plain SQLite: opening Optuna's storage while `tune` is still creating its tables races with it."""
    if not (home / "tune.db").is_file():
        return False  # connecting would create it
    try:
        with sqlite3.connect(home / "tune.db") as db:
            return (study,) in db.execute("SELECT study_name FROM studies").fetchall()
    except sqlite3.Error:
        return False


@pytest.mark.slow
def test_a_killed_study_resumes_without_repeating_finished_trials(tmp_path, tiny_model):
    home = tmp_path / "home"
    tickets_home(home, 30)
    # 80 steps a trial: the kill must land while trial 1 trains; with 10 a trial could finish between two polls
    # (seen once in CI: the killed trial's run had completed)
    config, space = write_config(tmp_path, tiny_model, max_steps=80), lr_only(tmp_path, 1e-3, 1e-1)
    env = {**os.environ, "PYTHONPATH": str(SRC), "TUNESMITH_HOME": str(home)}
    process = subprocess.Popen(
        [sys.executable, "-m", "tunesmith", "tune", "--config", str(config), "--space", str(space), "--trials", "2", "--name", "k", "--pruner", "none"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:  # kill once trial 1 has trained a step
            trials = _trials(home, "k") if _study_exists(home, "k") else []
            run = trials[1].user_attrs.get("run_id") if len(trials) == 2 else None
            if run and (home / "runs" / run / "metrics.jsonl").is_file() and train_steps(home / "runs" / run):
                break
            assert process.poll() is None, "tune ended before it could be killed"
            time.sleep(0.3)
        else:
            pytest.fail("trial 1 never started")
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
    before = _trials(home, "k")
    assert [t.state.name for t in before] == ["COMPLETE", "RUNNING"]
    finished_run, killed_run = before[0].user_attrs["run_id"], before[1].user_attrs["run_id"]

    resumed = tunesmith_env(home, "tune", "--resume", "k")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "trial 1 of k was cut short" in resumed.stderr
    after = _trials(home, "k")
    assert [t.state.name for t in after] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert after[0].user_attrs["run_id"] == finished_run  # trial 0 kept as it was, not run again
    assert after[2].params == after[1].params and after[2].user_attrs["retry_of"] == 1
    runs = sorted(p.name for p in (home / "runs").iterdir())
    assert len(runs) == 3 and sum(r.startswith("k-t0-") for r in runs) == 1
    killed = run_json(home, killed_run)
    assert killed["study"] == {"name": "k", "trial": 1} and killed["status"] == "running"  # as the kill left it: `runs list` says interrupted
    assert "retry of trial 1" in resumed.stdout


# ---------------------------------------------------------------- parallel trials


@pytest.mark.slow
def test_two_jobs_run_trials_in_parallel_processes(tmp_path, tiny_model):
    home = tmp_path / "home"
    tickets_home(home, 30)
    done = tunesmith_env(
        home,
        "tune",
        "--config",
        str(write_config(tmp_path, tiny_model)),
        "--space",
        str(lr_only(tmp_path, 1e-3, 1e-1)),
        "--trials",
        "2",
        "--jobs",
        "2",
        "--name",
        "par",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    trials = _trials(home, "par")
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    owners = {t.user_attrs["owner"]["pid"] for t in trials}
    assert len(owners) == 2 and os.getpid() not in owners  # each trial in a process of its own
    assert trials[1].datetime_start < trials[0].datetime_complete  # at the same time
    for t in trials:
        assert run_json(home, t.user_attrs["run_id"])["study"] == {"name": "par", "trial": t.number}
        assert (home / "tune" / "par" / "logs" / f"trial-{t.number}.log").is_file()


def tunesmith_env(home: Path, *args: str) -> subprocess.CompletedProcess:
    return _cli({"TUNESMITH_HOME": str(home)}, *args)


# ---------------------------------------------------------------- bad input


def test_a_bad_space_file_exits_2_naming_each_field(tmp_path, tiny_model, capsys, monkeypatch):
    home = tmp_path / "home"
    tickets_home(home, 30)
    monkeypatch.setenv("TUNESMITH_HOME", str(home))
    space = tmp_path / "space.yaml"
    space.write_text(
        "params:\n"
        "  train.lr: {low: 0.1, high: 0.001, log: true}\n"
        "  train.lora.rank: [4, 8]\n"
        "  train.lora.r: {low: 0, high: 8}\n"
        "  train.epochs: {lo: 1, high: 3}\n",
        encoding="utf-8",
    )
    done = run_cli(capsys, "tune", "--config", str(write_config(tmp_path, tiny_model)), "--space", str(space), "--trials", "2")
    assert done.code == 2, done.err
    err = " ".join(done.err.split())
    assert "params.train.lr" in err and "low (0.1) is above high (0.001)" in err
    assert "params.train.epochs.lo" in err
    assert not (home / "tune.db").exists() or "Traceback" not in done.err
    assert "Traceback" not in done.err
    # the range checked against the run config's own rules: an unknown setting, a rank of 0
    space.write_text("params:\n  train.lora.rank: [4, 8]\n  train.lora.r: {low: 0, high: 8}\n", encoding="utf-8")
    done = run_cli(capsys, "tune", "--config", str(write_config(tmp_path, tiny_model)), "--space", str(space), "--trials", "2")
    err = " ".join(done.err.split())
    assert done.code == 2 and "params.train.lora.rank" in err and "unknown setting" in err, err
    assert "params.train.lora.r: 0 is refused" in err and "greater than or equal to 1" in err, err
    assert not any((home / "runs").iterdir())


def test_metric_that_does_not_fit_the_task_and_resume_of_an_unknown_study_exit_2(tmp_path, tiny_model, capsys, monkeypatch):
    home = tmp_path / "home"
    tickets_home(home, 30)
    monkeypatch.setenv("TUNESMITH_HOME", str(home))
    config = write_config(tmp_path, tiny_model)
    done = run_cli(capsys, "tune", "--config", str(config), "--trials", "2", "--metric", "f1_macro")
    assert done.code == 2 and "--metric f1_macro does not fit train.task causal_lm" in " ".join(done.err.split())
    done = run_cli(capsys, "tune", "--resume", "nothing-here")
    assert done.code == 2 and "no study named nothing-here" in done.err
    done = run_cli(capsys, "tune", "--config", str(config), "--trials", "0")
    assert done.code == 2 and "--trials must be a whole number from 1" in done.err


# ---------------------------------------------------------------- several base models, and the general-skills constraint


def bigger_tiny_model(tiny_model: Path, folder: Path) -> Path:
    """The tiny model's tokenizer under a wider Llama (hidden 64): the same task, more parameters."""
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    config = AutoConfig.from_pretrained(tiny_model)
    config.hidden_size, config.intermediate_size = 64, 128
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_models_verdict_names_the_smallest_feasible_model_and_keep_general_makes_trials_infeasible(tmp_path, tiny_model):
    """Random tiny models answer no probe question, so both score 0 on the general-skills probe; the small
    model's study is given a base score of 1.0 (its base_probe.json, which the study computes once and keeps)
    so that its trial drops by 1.0: over --keep-general 0.5, infeasible. The verdict then names the big model."""
    import shutil

    import tunesmith

    home = tmp_path / "home"
    workspace = tickets_home(home, 30)
    small = tmp_path / "small"
    shutil.copytree(tiny_model, small)
    big = bigger_tiny_model(tiny_model, tmp_path / "big")
    folder = home / "tune" / "g--small"
    folder.mkdir(parents=True)
    from tunesmith.eval.forgetting import load_probes

    every_answer_right = [{"id": probe["id"], "correct": True} for probe in load_probes()]
    (folder / "base_probe.json").write_text(json.dumps({"score": 1.0, "per_category": {}, "rows": every_answer_right}))
    result = tunesmith.tune(
        write_config(tmp_path, tiny_model, lr=0.03),
        trials=1,
        space=lr_only(tmp_path, 0.01, 0.05),
        models=[str(small), str(big)],
        target=100.0,  # any validation loss reaches it: the verdict turns on feasibility and size
        keep_general=0.5,
        name="g",
        workspace=workspace,
    )
    by_name = {r.name: r for r in result.studies}
    assert set(by_name) == {"g:small", "g:big"}
    assert by_name["g:small"].parameters < by_name["g:big"].parameters
    assert by_name["g:small"].rows[0]["probe_drop"] > 0.9 and by_name["g:small"].best_trial is None  # infeasible
    assert by_name["g:small"].test is None  # no best trial: the test split stays unread
    assert by_name["g:big"].rows[0]["probe_drop"] < 0.5 and by_name["g:big"].best_trial == 0  # a random model may guess one probe right
    assert result.smallest == str(big)
    assert result.verdict.startswith(f"the smallest model that reaches validation val_loss 100 is {big}")


# ---------------------------------------------------------------- the study's budget


def test_the_study_budget_stops_the_running_trial_and_starts_no_more_even_after_resume(tmp_path, tiny_model, capsys, monkeypatch):
    """--max-time covers the whole study: the first trial gets what is left as its training budget and stops
    after a step (failed, its run "stopped" and resumable), no second trial starts, and a resumed study
    counts the time already used."""
    home = tmp_path / "home"
    tickets_home(home, 30)
    monkeypatch.setenv("TUNESMITH_HOME", str(home))
    # far more steps than fit in the budget on any machine: a fast machine must not finish the trial inside it
    config = write_config(tmp_path, tiny_model, max_steps=LONG_TRIAL_STEPS)
    args = ("tune", "--config", str(config), "--space", str(lr_only(tmp_path, 1e-2, 1e-1)), "--trials", "3", "--name", "b")
    done = run_cli(capsys, *args, "--max-time", "0.5")
    assert done.code == 0, done.err
    trials = _trials(home, "b")
    assert [t.state.name for t in trials] == ["FAIL"]
    assert "--max-time" in trials[0].user_attrs["error"] and "budget is spent" in " ".join(done.err.split())
    info = run_json(home, trials[0].user_attrs["run_id"])
    assert info["status"] == "stopped" and info["study"] == {"name": "b", "trial": 0}
    assert len(train_steps(home / "runs" / info["run_id"])) < LONG_TRIAL_STEPS
    resumed = run_cli(capsys, "tune", "--resume", "b")
    assert resumed.code == 0 and len(_trials(home, "b")) == 1
    assert "best: no completed trial" in resumed.out and "test split" not in resumed.out


# ---------------------------------------------------------------- a task metric as the objective


@pytest.mark.slow
def test_a_task_metric_is_scored_on_validation_and_fed_to_the_pruner_from_the_generation_probe(tmp_path, tiny_model):
    """--metric exact_match: each trial's value is eval's score of its kept model on the validation split
    (registered as a validation evaluation); during training the pruner gets the generation probe's
    gen/exact_match records; only the best trial's run is ever scored on the test split."""
    import tunesmith

    home = tmp_path / "home"
    workspace = tickets_home(home, 30)
    config = write_config(tmp_path, tiny_model, generation_eval={"every_steps": 5, "sample_size": 3, "max_new_tokens": 8})
    result = tunesmith.tune(config, trials=2, metric="exact_match", space=lr_only(tmp_path, 1e-2, 1e-1), name="em", workspace=workspace)
    report = result.best
    assert report.metric == "exact_match" and report.direction == "maximize"
    trials = _trials(home, "em")
    for t in trials:
        assert t.state.name == "COMPLETE" and t.value == t.user_attrs["validation"]["exact_match"]
        assert sorted(t.intermediate_values) == [5]  # the probe at step 5 (the last step, 10, ends the run: nothing left to prune)
    rows = registry_rows(home, "SELECT run_id, split FROM evaluations WHERE model_id = 'tuned' ORDER BY id")
    assert sorted(r for r in rows if r[1] == "validation") == sorted((t.user_attrs["run_id"], "validation") for t in trials)
    assert [r for r in rows if r[1] == "test"] == [(report.best_run, "test")]


def test_a_study_that_limits_the_probe_drop_also_searches_the_replay_share_and_only_then(tiny_model):
    from tunesmith.config import RunSpec
    from tunesmith.tune.space import build_space

    spec = RunSpec.model_validate({"model": {"name": str(tiny_model)}, "data": {"dataset": "tickets"}})
    assert "data.keep_general.fraction" not in build_space(spec).params  # free to lower it, a search would trade general skills away
    space = build_space(spec, keeps_general=True)
    share = space.params["data.keep_general.fraction"]
    assert (share.low, share.high) == (0.05, 0.4) and "train.lr" in space.params
    trial = space.apply(spec, {"data.keep_general.fraction": 0.3, "train.lr": 1e-3}, "trial 0")
    assert trial.data.keep_general.fraction == 0.3 and trial.train.lr == 1e-3
    off = RunSpec.model_validate({"model": {"name": str(tiny_model)}, "data": {"dataset": "tickets", "keep_general": False}})
    assert "data.keep_general.fraction" not in build_space(off, keeps_general=True).params  # replay turned off stays off


def test_each_method_has_the_default_space_the_docs_promise():
    from tunesmith.config import RunSpec
    from tunesmith.tune.space import build_space

    def searched(method: str) -> set[str]:
        return set(build_space(RunSpec.model_validate({"data": {"dataset": "x"}, "train": {"method": method}})).params)

    assert {"train.lr", "train.lora.r", "train.lora.alpha", "train.epochs", "train.lora.dropout"} <= searched("lora")
    assert searched("full") == {"train.lr", "train.epochs"}
    assert {"train.lr", "train.prompt_tuning.num_virtual_tokens"} <= searched("prompt_tuning")
    lr = build_space(RunSpec.model_validate({"data": {"dataset": "x"}})).params["train.lr"]
    assert lr.log  # a learning rate is searched on a log scale
