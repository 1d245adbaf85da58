"""Continued fine-tuning: `tunesmith train --from RUN` and `model.from_run` start from that run's
adapter or weights, on its base, and record where they came from."""

from __future__ import annotations

import json

import pytest
import yaml
from clihelp import run_cli
from conftest import run_id_from, step_losses, tickets_home, tiny_records


@pytest.fixture(scope="module")
def parent(tmp_path_factory, tiny_model):
    """A LoRA run named `first` that learned enough for its loss to fall well below the base's."""
    from tunesmith.config import RunSpec
    from tunesmith.train.recipe import train

    ws = tickets_home(tmp_path_factory.mktemp("continued") / "home", 30)
    spec = {"name": "first", "model": {"name": str(tiny_model)}, "data": {"dataset": "tickets"}, "train": {"max_steps": 12, "lr": 3e-2, "batch_size": 4}}
    run_id = train(RunSpec.model_validate(spec), ws).info.run_id
    losses = step_losses(ws.run_dir(run_id))
    # LoRA starts as the base itself (its B matrices are zero): the first loss is the base model's
    assert losses[-1] < 0.7 * losses[0], f"the parent did not learn enough to tell a continued run from a fresh one: {losses}"
    return {"ws": ws, "id": run_id, "base_loss": losses[0], "last_loss": losses[-1]}


@pytest.fixture()
def cli(capsys, monkeypatch, parent):
    monkeypatch.setenv("TUNESMITH_HOME", str(parent["ws"].home))
    return lambda *args: run_cli(capsys, *args)


def test_a_continued_lora_run_starts_where_its_parent_ended(cli, parent, tiny_model):
    import tunesmith

    done = cli("train", "--from", "first", "--data", "tickets", "--max-steps", "2", "--lr", "1e-3", "--batch-size", "4")
    assert done.code == 0, done.err
    child = parent["ws"].run_dir(run_id_from(done.out))
    first = step_losses(child)[0]
    assert first < 0.8 * parent["base_loss"], (first, parent)
    assert abs(first - parent["last_loss"]) < 0.25 * parent["last_loss"], (first, parent)
    info = json.loads((child / "run.json").read_text())
    assert info["parent_run"] == parent["id"] and info["method"] == "lora" and info["base_model"] == str(tiny_model)
    config = yaml.safe_load((child / "config.yaml").read_text())
    assert config["model"]["from_run"] == str(parent["ws"].run_dir(parent["id"]))
    assert tunesmith.load_run(child.name, workspace=parent["ws"].home).generate("refund please", max_new_tokens=4) is not None
    shown = cli("runs", "show", child.name)
    assert f"continued from: {parent['id']}" in shown.out
    compared = cli("runs", "compare", parent["id"], child.name)
    assert "continued from" in compared.out and parent["id"] in compared.out


def test_full_fine_tuning_from_a_config_starts_from_the_merged_adapter(cli, parent, tmp_path):
    # the same tickets without their system message: the parent was trained with one, which the run is told
    bare = tmp_path / "bare.jsonl"
    bare.write_text("".join(json.dumps({"messages": r["messages"][1:]}) + "\n" for r in tiny_records(30)))
    config = tmp_path / "continue.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": {"from_run": parent["id"]},
                "data": {"path": str(bare), "prepare": {"pii": "off"}},
                "train": {"method": "full", "max_steps": 1, "batch_size": 4},
            }
        )
    )
    done = cli("train", "--config", str(config))
    assert done.code == 0, done.err
    assert "was trained with the system message 'Route this Nimbus" in done.err and "learns to answer without it" in done.err
    child = parent["ws"].run_dir(run_id_from(done.out))
    assert step_losses(child)[0] < 0.8 * parent["base_loss"]
    info = json.loads((child / "run.json").read_text())
    assert info["parent_run"] == parent["id"] and info["artefact"] == "model"


@pytest.mark.parametrize(("parent_method", "lr", "child_method"), [("prompt_tuning", 3e-1, None), ("full", 1e-3, "lora")])
def test_other_methods_continue_from_what_their_parent_learned(parent, tiny_model, parent_method, lr, child_method):
    """Prompt tuning's virtual tokens train on (PEFT loads them for inference only); a full run's
    weights are the base a new adapter starts on."""
    from tunesmith.config import RunSpec
    from tunesmith.train.recipe import train

    ws = parent["ws"]
    first = {"model": {"name": str(tiny_model)}, "data": {"dataset": "tickets"}, "train": {"method": parent_method, "max_steps": 12, "lr": lr, "batch_size": 4}}
    first_id = train(RunSpec.model_validate(first), ws).info.run_id
    learned = step_losses(ws.run_dir(first_id))
    then = {"max_steps": 1, "batch_size": 4, "lr": 1e-4, **({"method": child_method} if child_method else {})}
    result = train(RunSpec.model_validate({"model": {"from_run": first_id}, "data": {"dataset": "tickets"}, "train": then}), ws)
    assert result.info.method == (child_method or parent_method) and result.info.parent_run == first_id
    assert step_losses(result.run_dir)[0] < learned[0] - 0.5 * (learned[0] - learned[-1]), learned


def test_bad_references_exit_2_naming_them(cli, parent):
    before = sorted(p.name for p in (parent["ws"].home / "runs").iterdir())
    missing = cli("train", "--from", "no-such-run", "--data", "tickets", "--max-steps", "1")
    assert missing.code == 2 and "no-such-run" in missing.err and "--from" in missing.err
    wrong_method = cli("train", "--from", "first", "--data", "tickets", "--method", "prompt_tuning", "--max-steps", "1")
    assert (
        wrong_method.code == 2
        and "lora run" in wrong_method.err
        and "prompt_tuning" in wrong_method.err
        and "use method lora or qlora or full" in wrong_method.err
    )
    other_base = cli("train", "--from", "first", "--data", "tickets", "--model", "smollm2-135m-instruct", "--max-steps", "1")
    assert other_base.code == 2 and "keeps its parent's base" in other_base.err
    assert sorted(p.name for p in (parent["ws"].home / "runs").iterdir()) == before  # refused before any run folder was made


@pytest.mark.slow
def test_a_killed_continued_run_resumes_as_if_never_stopped(cli, parent, tmp_path):
    from clihelp import tunesmith
    from conftest import only_run

    config = tmp_path / "continue.yaml"
    config.write_text(
        yaml.safe_dump(
            {"model": {"from_run": "first"}, "data": {"dataset": "tickets"}, "train": {"max_steps": 6, "batch_size": 4, "lr": 1e-2, "save_every_steps": 2}}
        )
    )
    whole = cli("train", "--config", str(config))
    assert whole.code == 0, whole.err
    reference = parent["ws"].run_dir(run_id_from(whole.out))
    before = {p.name for p in (parent["ws"].home / "runs").iterdir()}
    killed = tunesmith("train", "--config", str(config), kill_at="step:5")  # inside step 5: the last checkpoint is step 4
    assert killed.returncode == -9, killed.stderr
    run_dir = only_run(parent["ws"].home, besides=before)
    done = tunesmith("train", "--resume", run_dir.name)
    assert done.returncode == 0, done.stderr
    assert "resuming at step 4 of 6" in done.stderr
    assert step_losses(run_dir) == pytest.approx(step_losses(reference), abs=2e-5)  # the parent's adapter, then the checkpoint over it
    assert json.loads((run_dir / "run.json").read_text())["parent_run"] == parent["id"]
