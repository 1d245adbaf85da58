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


def test_bad_references_exit_2_naming_them(cli, parent):
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
    runs = sorted(p.name for p in (parent["ws"].home / "runs").iterdir())
    assert not [r for r in runs if not r.startswith("first-") and not json.loads((parent["ws"].run_dir(r) / "run.json").read_text()).get("parent_run")]
