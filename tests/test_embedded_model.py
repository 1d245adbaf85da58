"""The real embedded model (SmolLM2-135M-Instruct from its PyPI package): marked slow, runs in `make test`."""

from __future__ import annotations

import json

import pytest
from clihelp import run_cli
from conftest import run_id_from, step_losses

pytestmark = pytest.mark.slow


def test_embedded_model_trains_a_few_steps_and_answers_with_its_template(capsys, home, tickets_file):
    from tunesmith.models.loading import resolve_model_path

    folder = resolve_model_path("smollm2-135m-instruct")  # converted once from the GGUF, then cached
    assert (folder and json.loads(open(f"{folder}/config.json").read())["model_type"]) == "llama"

    assert run_cli(capsys, "data", "prepare", str(tickets_file), "--out", "t").code == 0
    # --keep-general 0: six steps of the task alone (the default replay is measured in docs/forgetting.md and
    # tested on the tiny model; SmolLM2 answering its 150 prompts would add minutes to the suite)
    result = run_cli(capsys, "train", "--data", "t", "--epochs", "1", "--batch-size", "8", "--lr", "2e-3", "--keep-general", "0")
    assert result.code == 0, result.err
    run_id = run_id_from(result.out)
    run_dir = home / "runs" / run_id
    losses = step_losses(run_dir)
    assert len(losses) == 6 and losses[-1] < losses[0]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["end_of_turn_ids"] == [2]  # <|im_end|>, which is also SmolLM2's pad token
    generation = json.loads((run_dir / "adapter" / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [2]  # serving stops where training taught the model to stop

    answer = run_cli(capsys, "generate", run_id, "--prompt", "KST-12 is down, nobody can work", "--max-new-tokens", "40")
    assert answer.code == 0 and answer.out.strip()
    assert "<|im_end|>" not in answer.out and "<|im_start|>" not in answer.out
