"""Damaged files in the workspace (truncated by a full disk or a kill, garbled by a bad copy, saved in
another encoding) give exit 2 with the file named and what to do, never a traceback; a resumed run
falls back to its newest intact checkpoint and says which and why."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from clihelp import run_cli, tunesmith
from conftest import only_run


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, tiny_model):
    """A home with the tickets dataset and one tiny LoRA run, made once and copied for each case."""
    from conftest import tickets_home, train_tiny

    home = tmp_path_factory.mktemp("damage") / "home"
    ws = tickets_home(home)
    return home, train_tiny(ws, tiny_model, max_steps=2, batch_size=4)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def not_utf8(path: Path) -> None:
    path.write_bytes(path.read_bytes() + "# caf\u00e9 in CP1252\n".encode("cp1252"))


def empty(path: Path) -> None:
    path.write_bytes(b"")


def delete(path: Path) -> None:
    path.unlink()


def cut_answers(path: Path) -> None:
    """Evaluated answers whose last line a full disk cut off."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"id": "a", "prompt": "p", "prediction": "x", "reference": "x"}\n{"id": "b", "pro', encoding="utf-8")


RUN = "{run}"
# (file inside the home, damage, command, text the error must name)
CASES = [
    ("runs/{run}/run.json", truncate, ["generate", RUN, "-p", "hi"], "run.json"),
    ("runs/{run}/run.json", empty, ["runs", "show", RUN], "run.json"),
    ("runs/{run}/config.yaml", truncate, ["eval", RUN, "--limit", "1"], "config.yaml"),
    ("runs/{run}/config.yaml", not_utf8, ["generate", RUN, "-p", "hi"], "config.yaml"),
    ("runs/{run}/config.yaml", delete, ["chat", RUN], "config.yaml"),
    ("runs/{run}/adapter/adapter_model.safetensors", truncate, ["generate", RUN, "-p", "hi"], "adapter_model.safetensors"),
    ("runs/{run}/adapter/adapter_config.json", truncate, ["generate", RUN, "-p", "hi"], "adapter_config.json"),
    ("runs/{run}/adapter/tokenizer.json", delete, ["generate", RUN, "-p", "hi"], "tokenizer"),  # found by test_fuzz_files
    (
        "runs/{run}/eval/test-tuned.jsonl",
        cut_answers,
        ["eval", "judge", RUN, "--judge-url", "http://127.0.0.1:9/v1", "--judge-model", "m"],
        "test-tuned.jsonl:2",
    ),
    ("datasets/tickets/manifest.json", truncate, ["eval", RUN, "--limit", "1"], "manifest.json"),
    ("datasets/tickets/manifest.json", delete, ["data", "stats", "tickets"], "manifest.json"),
    ("datasets/tickets/test.jsonl", truncate, ["eval", RUN, "--limit", "50", "--no-perplexity"], "test.jsonl:"),
]


@pytest.mark.parametrize(("file", "damage", "args", "named"), CASES, ids=[f"{c[0].split('/')[-1]}-{c[1].__name__}-{c[2][0]}" for c in CASES])
def test_a_damaged_file_is_named_with_a_fix(file, damage, args, named, pristine, tmp_path, monkeypatch, capsys):
    source, run_id = pristine
    home = shutil.copytree(source, tmp_path / "home")
    monkeypatch.setenv("TUNESMITH_HOME", str(home))
    target = home / file.format(run=run_id)
    damage(target)
    result = run_cli(capsys, *[a.format(run=run_id) for a in args])
    assert result.code == 2, result.err
    assert "Traceback" not in result.err
    assert named in result.err and "fix:" in result.err, result.err
    assert str(target.parent) in result.err or str(target) in result.err  # the whole path, so the user finds it


def test_a_config_that_is_not_utf8_is_named_and_utf16_is_read(pristine, tmp_path, monkeypatch, capsys):
    source, _ = pristine
    monkeypatch.setenv("TUNESMITH_HOME", str(shutil.copytree(source, tmp_path / "home")))
    # A model name that is no hub id (no "org/"): refused at once. A hub id sent huggingface_hub offline
    # into five retries with back-off, 45 s of this test, to end in the same refusal.
    text = "# run config, caf\u00e9\ndata: {dataset: tickets}\ntrain: {max_steps: 1, batch_size: 4}\nmodel: {name: nowhere-at-all}\n"
    cp1252 = tmp_path / "cp1252.yaml"
    cp1252.write_bytes(text.encode("cp1252"))
    result = run_cli(capsys, "train", "--config", str(cp1252), "--dry-run")
    assert result.code == 2 and f"{cp1252}:1" in result.err and "UTF-8" in result.err and "Traceback" not in result.err
    utf16 = tmp_path / "utf16.yaml"
    utf16.write_bytes(text.encode("utf-16"))  # with its byte-order mark, as Windows editors save "Unicode"
    result = run_cli(capsys, "train", "--config", str(utf16), "--dry-run")
    assert "UTF-8" not in result.err and "unknown model 'nowhere-at-all'" in " ".join(result.err.split())  # read, then refused for the model it names


def test_resume_falls_back_to_the_newest_intact_checkpoint(home, tiny_model, tickets_file, tmp_path, capsys):
    """Killed in step 8 with checkpoints at step 6 (validation, best) and 7; step 7's trainer state is
    then truncated. Resume says so, continues from step 6 and completes."""
    assert run_cli(capsys, "data", "prepare", str(tickets_file), "--out", "tickets", "--pii", "off").code == 0
    config = tmp_path / "run.yaml"
    config.write_text(
        # keep_general off: 48 examples / batch 8 = 6 steps an epoch, the counts the docstring names
        f"model: {{name: {tiny_model}}}\ndata: {{dataset: tickets, keep_general: false}}\ntrain: {{epochs: 2, batch_size: 8, save_every_steps: 1, evals_per_epoch: 1}}\n",
        encoding="utf-8",
    )
    killed = tunesmith("train", "--config", str(config), kill_at="step:8")
    assert killed.returncode != 0
    run_dir = only_run(home)
    steps = sorted(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("step-*"))
    assert steps[-1] == 7 and len(steps) == 2, steps
    truncate(run_dir / "checkpoints" / "step-7" / "trainer_state.pt")
    result = run_cli(capsys, "train", "--resume", run_dir.name)
    assert result.code == 0, result.err
    err = " ".join(result.err.split())
    assert "checkpoint step-7 is damaged" in err and "trainer_state.pt" in err and f"trying step-{steps[0]}" in err
    assert f"resuming at step {steps[0]}" in err
    assert json.loads((run_dir / "run.json").read_text())["status"] == "completed"
