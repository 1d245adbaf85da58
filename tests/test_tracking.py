"""train.report_to: every metrics record also reaches TensorBoard / MLflow, offline, with the same numbers."""

from __future__ import annotations

import importlib.util
import json
import time

import pytest
from clihelp import run_cli
from conftest import read_metrics, run_id_from


def _train(capsys, home, tiny_model, tickets_file, *extra: str):
    assert run_cli(capsys, "data", "prepare", str(tickets_file), "--out", "tickets", "--no-pii-ner").code == 0
    result = run_cli(capsys, "train", "--model", str(tiny_model), "--data", "tickets", "--epochs", "2", "--batch-size", "8", *extra)
    assert result.code == 0, result.err
    run_dir = home / "runs" / run_id_from(result.out)
    return run_dir, read_metrics(run_dir)


def _series(records: list[dict], key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in records if r.get(key) is not None]


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="pip install tensorboard")
def test_tensorboard_event_files_hold_the_logged_losses(capsys, home, tiny_model, tickets_file):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, records = _train(capsys, home, tiny_model, tickets_file, "--report-to", "tensorboard")
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    for key in ("loss", "val_loss", "lr"):
        logged = [(e.step, e.value) for e in events.Scalars(key)]
        expected = _series(records, key)
        assert len(logged) == len(expected) > 0
        for (step, value), (want_step, want) in zip(logged, expected):
            assert step == want_step and value == pytest.approx(want, rel=1e-6)  # event files store float32


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="pip install mlflow")
def test_mlflow_sqlite_store_in_the_workspace_holds_the_logged_losses(capsys, home, tiny_model, tickets_file, monkeypatch, tmp_path):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    run_dir, records = _train(capsys, home, tiny_model, tickets_file, "--report-to", "mlflow,tensorboard")
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("tunesmith").experiment_id])
    assert run.info.run_name == run_dir.name and run.info.status == "FINISHED"
    assert run.data.params["train.batch_size"] == "8" and run.data.params["model.name"] == str(tiny_model)
    for key in ("loss", "val_loss"):
        history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
        assert [(m.step, m.value) for m in history] == _series(records, key)
    assert not (tmp_path / "mlruns").exists()  # nothing left in the user's current folder
    assert (run_dir / "tensorboard").is_dir()  # both trackers at once


def test_a_missing_tracker_package_is_a_usage_error_naming_the_install(capsys, home, tiny_model, tickets_file, monkeypatch):
    import tunesmith.train.run.tracking as tracking

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real_find_spec(name, *a))
    assert run_cli(capsys, "data", "prepare", str(tickets_file), "--out", "tickets", "--no-pii-ner").code == 0
    result = run_cli(capsys, "train", "--model", str(tiny_model), "--data", "tickets", "--report-to", "wandb")
    assert result.code == 2 and "Traceback" not in result.err
    assert "pip install wandb" in result.err and "train.report_to" in result.err
    assert list((home / "runs").iterdir()) == []


def test_an_unknown_tracker_is_reported_with_its_field(capsys, home, tickets_file):
    result = run_cli(capsys, "train", "--data", str(tickets_file), "--report-to", "neptune")
    assert result.code == 2 and "train.report_to.0" in result.err


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="pip install wandb")
def test_wandb_runs_offline_into_the_run_folder(tmp_path, monkeypatch):
    from tunesmith.config import RunSpec
    from tunesmith.train.run.tracking import open_trackers

    monkeypatch.delenv("WANDB_MODE", raising=False)
    run_dir = tmp_path / "home" / "runs" / "run-1"
    run_dir.mkdir(parents=True)
    spec = RunSpec.model_validate({"data": {"dataset": "d"}, "train": {"report_to": ["wandb"]}})
    records = [{"step": s, "epoch": s / 4, "loss": round(3 / s + 0.01234, 5)} for s in range(1, 5)] + [{"step": 4, "val_loss": 0.98765}]
    with open_trackers(spec, run_dir) as trackers:
        for record in records:
            trackers.log(record)
    # wandb 0.31 keeps no Python reader for its offline log; the values are stored as JSON text in
    # it, written by wandb's own service process, which may finish a moment after run.finish().
    [log] = list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    wanted = [json.dumps(r.get("loss", r.get("val_loss"))).encode() for r in records]
    deadline = time.monotonic() + 60
    while any(value not in log.read_bytes() for value in wanted) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert [value for value in wanted if value not in log.read_bytes()] == []
