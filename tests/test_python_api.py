"""The Python API (docs/python-api.md): its example runs as written, `import tunesmith` stays cheap, the
functions raise the CLI's errors, and a classification run goes through the same calls."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from clihelp import SRC, run_cli

DOC = Path(__file__).parents[1] / "docs" / "python-api.md"


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_the_documented_example_runs(tmp_path, monkeypatch, tiny_model, capsys):
    blocks = _python_blocks(DOC.read_text(encoding="utf-8"))
    assert blocks, "docs/python-api.md has no ```python block"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EXAMPLE_MODEL", str(tiny_model))  # the base model the example reads; a real one there
    monkeypatch.delenv("TUNESMITH_HOME", raising=False)
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), {"__name__": "__doc_example__"})
    printed = capsys.readouterr().out
    runs = list((tmp_path / "example-home" / "runs").iterdir())
    assert len(runs) == 1
    run_id = runs[0].name
    assert f"{run_id} completed" in printed and "tuned" in printed and "base" in printed
    assert (runs[0] / "report.html").is_file() and f"report: {runs[0] / 'report.html'}" in printed
    assert json.loads((runs[0] / "run.json").read_text())["status"] == "completed"
    assert (tmp_path / "example-home" / "datasets" / "tickets" / "manifest.json").is_file()


def test_import_tunesmith_does_not_load_torch():
    code = (
        "import sys, tunesmith; assert 'torch' not in sys.modules; "
        "assert callable(tunesmith.train) and tunesmith.Workspace and tunesmith.UserError; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, sorted(sys.modules); "
        "print(tunesmith.__version__)"
    )
    done = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(SRC)}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", done.stdout.strip())


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model):
    """One LoRA run on `tickets`, trained through the API from a dict spec (shared by the tests below)."""
    from conftest import tickets_home

    import tunesmith

    ws = tickets_home(tmp_path_factory.mktemp("api-home"), 30)
    result = tunesmith.train({"model": {"name": str(tiny_model)}, "data": {"dataset": "tickets"}, "train": {"max_steps": 2, "batch_size": 4}}, workspace=ws)
    return ws, result


def test_train_from_a_dict_spec(trained):
    ws, result = trained
    assert result.status == "completed" and result.run_dir == ws.run_dir(result.run_id)
    assert set(result.best_metrics) == {"val_loss"} and result.best_metrics["val_loss"] > 0
    assert json.loads((result.run_dir / "run.json").read_text())["run_id"] == result.run_id
    assert "max_steps: 2" in (result.run_dir / "config.yaml").read_text()


def _cli_error(capsys, monkeypatch, home: Path, *args: str) -> str:
    monkeypatch.setenv("TUNESMITH_HOME", str(home))
    result = run_cli(capsys, *args)
    assert result.code == 2
    return " ".join((result.out + result.err).split())


def _same_text(err, cli_text: str) -> None:
    assert " ".join(err.render().split()) in cli_text


def test_each_function_raises_the_clis_error(trained, capsys, monkeypatch, tmp_path):
    import tunesmith

    ws, result = trained
    # an unknown run: the same message from every function that takes one, and from the CLI
    for call in (
        lambda: tunesmith.load_run("no-such-run", workspace=ws),
        lambda: tunesmith.evaluate("no-such-run", workspace=ws),
        lambda: tunesmith.resume("no-such-run", workspace=ws),
        lambda: tunesmith.generate("no-such-run", "hi", workspace=ws),
        lambda: tunesmith.classify("no-such-run", ["hi"], workspace=ws),
    ):
        with pytest.raises(tunesmith.UserError) as caught:
            call()
        _same_text(caught.value, _cli_error(capsys, monkeypatch, ws.home, "eval", "no-such-run"))
    with pytest.raises(tunesmith.UserError) as caught:
        tunesmith.load_dataset("nothing", workspace=ws)
    assert str(caught.value).startswith("no dataset named 'nothing'")
    _same_text(caught.value, _cli_error(capsys, monkeypatch, ws.home, "data", "stats", "nothing"))
    with pytest.raises(tunesmith.UserError) as caught:
        tunesmith.prepare_dataset(tmp_path / "absent.jsonl", workspace=ws)
    _same_text(caught.value, _cli_error(capsys, monkeypatch, ws.home, "data", "prepare", str(tmp_path / "absent.jsonl")))
    with pytest.raises(tunesmith.UserError) as caught:
        tunesmith.resume(result.run_id, workspace=ws)
    assert str(caught.value) == f"run {result.run_id} has already completed"
    _same_text(caught.value, _cli_error(capsys, monkeypatch, ws.home, "train", "--resume", result.run_id))
    with pytest.raises(tunesmith.UserError) as caught:
        tunesmith.evaluate(result.run_id, baselines=["three-shot"], workspace=ws)
    _same_text(caught.value, _cli_error(capsys, monkeypatch, ws.home, "eval", result.run_id, "--baselines", "three-shot"))
    with pytest.raises(tunesmith.UserError) as caught:
        tunesmith.load_run(result.run_id, workspace=ws).classify(["hi"])
    _same_text(caught.value, _cli_error(capsys, monkeypatch, ws.home, "classify", result.run_id, "--text", "hi"))


def test_a_bad_spec_lists_every_problem_and_writes_nothing(trained):
    import tunesmith

    ws, _ = trained
    before = sorted(p.name for p in ws.runs.iterdir())
    with pytest.raises(tunesmith.errors.ProblemList) as caught:
        tunesmith.train({"data": {"dataset": "tickets"}, "train": {"epochs": 0, "colour": "red"}}, workspace=ws)
    assert "invalid configuration in the spec given to tunesmith.train" in str(caught.value)
    assert any(p.startswith("train.epochs") for p in caught.value.problems) and any(
        p.startswith("train.colour: unknown setting") for p in caught.value.problems
    )
    with pytest.raises(tunesmith.errors.ProblemList, match="invalid configuration in the spec given to tunesmith.train") as caught:
        tunesmith.train({"train": {"max_steps": 1}}, workspace=ws)
    assert caught.value.problems == ["data: no data given; pass --data NAME_OR_FILE or set data.dataset / data.path in the config"]
    assert sorted(p.name for p in ws.runs.iterdir()) == before


def test_load_run_generates_as_the_cli_does(trained, capsys, monkeypatch):
    import tunesmith

    ws, result = trained
    run = tunesmith.load_run(result.run_id, workspace=ws)
    assert run.info.run_id == result.run_id and run.spec.train.max_steps == 2 and run.folder == result.run_dir
    answer = run.generate("My invoice was charged twice.", max_new_tokens=8)
    monkeypatch.setenv("TUNESMITH_HOME", str(ws.home))
    cli = run_cli(capsys, "generate", result.run_id, "--prompt", "My invoice was charged twice.", "--max-new-tokens", "8")
    assert cli.code == 0 and cli.out == answer + "\n"  # greedy: the same answer
    chat = run.chat(max_new_tokens=4)
    chat.reply("hello")
    assert [m["role"] for m in chat.history] == ["user", "assistant"]


def test_a_classification_run_through_the_api(tmp_path, tiny_bert, classes_file, capsys):
    import tunesmith

    ws = tunesmith.Workspace.from_env(tmp_path / "home")
    tunesmith.prepare_dataset(classes_file, name="classes", options={"pii": "off"}, workspace=ws)
    spec = tunesmith.RunSpec.model_validate(
        {"model": {"name": str(tiny_bert)}, "data": {"dataset": "classes"}, "train": {"task": "classification", "method": "full", "max_steps": 2, "lr": 1e-3}}
    )
    result = tunesmith.train(spec, workspace=ws)
    assert result.status == "completed" and {"val_loss", "accuracy", "f1_macro"} <= set(result.best_metrics)
    evaluation = tunesmith.evaluate(result.run_id, compare_base=True, workspace=ws)
    assert list(evaluation.metrics) == ["tuned"] and 0 <= evaluation.metrics["tuned"]["accuracy"] <= 1
    assert "confusion_matrix" in json.loads((result.run_dir / "eval" / "report.json").read_text())["test"]["tuned"]
    found = tunesmith.classify(result.run_id, ["I was charged twice", "it crashes"], workspace=ws)
    assert [sorted(r["probabilities"]) for r in found] == [["billing", "bug", "praise"]] * 2
    with pytest.raises(tunesmith.UserError, match="is a classifier"):
        tunesmith.generate(result.run_id, "hi", workspace=ws)


def test_tunesmith_train_is_callable_and_still_the_training_package(home, tiny_model):
    """tunesmith.train names the API function and the training package: calling it trains, and every
    import form of the package's modules keeps working (a stage's import rebinds the name on the root)."""
    import tunesmith
    import tunesmith.train.run.tracking as tracking  # the form a property-based alias would break
    from tunesmith.train.recipe import train as stage_train

    assert callable(tunesmith.train) and tracking.__name__ == "tunesmith.train.run.tracking"
    assert tunesmith.train is sys.modules["tunesmith.train"] and stage_train.__module__ == "tunesmith.train.recipe"
    with pytest.raises(tunesmith.UserError, match="no dataset named 'nowhere'"):
        tunesmith.train({"model": {"name": str(tiny_model)}, "data": {"dataset": "nowhere"}})
