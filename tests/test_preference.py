"""Preference tuning end to end on the tiny model: OpenAI's preference format and prompt/chosen/rejected
read, validated with codes and lines, prepared into a versioned dataset; DPO (and SimPO, ORPO) trained in
the shared loop with the reference log-probabilities computed once; a killed run resumed exactly; and
`tunesmith eval` reporting reward accuracy on held-out pairs for tuned and base, and a judge's win rate."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml
from chatserver import ChatCompletions, serve
from clihelp import run_cli, tunesmith
from conftest import only_run, read_metrics, run_id_from, tiny_records, train_steps, validations

from tunesmith.data.formats import load_examples
from tunesmith.data.validate import validate_file


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


def yes_no_pairs(n: int, seed: int = 3) -> list[dict]:
    """A clear, learnable preference: to every ticket the preferred answer starts with "yes", the
    rejected one with "no", and both go on with the same words drawn from the ticket."""
    rng = random.Random(seed)
    pairs = []
    for record in tiny_records(n, seed):
        user = record["messages"][1]["content"]
        tail = " ".join(rng.sample(user.split(), 3))
        pairs.append({"prompt": user, "chosen": f"yes {tail}", "rejected": f"no {tail}"})
    return pairs


# ---------------------------------------------------------------- formats


def test_both_preference_formats_become_pairs_of_the_canonical_example(tmp_path):
    openai = write_jsonl(
        tmp_path / "openai.jsonl",
        [
            {
                "input": {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Is the sky blue?"}], "tools": []},
                "preferred_output": [{"role": "assistant", "content": "Yes."}],
                "non_preferred_output": [{"role": "assistant", "content": "It depends on many things."}],
            }
        ],
    )
    (example,), fmt = load_examples(openai)
    assert fmt == "preference"
    assert [m.role for m in example.messages] == ["system", "user", "assistant"]
    assert example.reference == "Yes." and example.rejected.content == "It depends on many things."
    assert [m.content for m in example.prompt_messages] == ["Be brief.", "Is the sky blue?"]

    common = write_jsonl(
        tmp_path / "pcr.jsonl",
        [
            {"prompt": "Is water wet?", "chosen": "Yes.", "rejected": "No idea."},
            {
                "prompt": [{"role": "user", "content": "hi"}],
                "chosen": [{"role": "assistant", "content": "Hello!"}],
                "rejected": [{"role": "assistant", "content": "What?"}],
            },
            # TRL's implicit prompt: whole conversations that differ only in the last answer
            {
                "chosen": [{"role": "user", "content": "hey"}, {"role": "assistant", "content": "Hey there."}],
                "rejected": [{"role": "user", "content": "hey"}, {"role": "assistant", "content": "Go away."}],
            },
        ],
    )
    examples, fmt = load_examples(common)
    assert fmt == "prompt_chosen_rejected"
    assert [(e.prompt_messages[-1].content, e.reference, e.rejected.content) for e in examples] == [
        ("Is water wet?", "Yes.", "No idea."),
        ("hi", "Hello!", "What?"),
        ("hey", "Hey there.", "Go away."),
    ]
    # the rejected answer is part of what a pair says: same prompt and answer, another rejected one, another pair
    assert examples[0].content_key() != examples[0].model_copy(update={"rejected": examples[1].rejected}).content_key()


def test_bad_preference_lines_are_named_by_code_and_line(tmp_path, capsys, home):
    good = {
        "input": {"messages": [{"role": "user", "content": "Q"}]},
        "preferred_output": [{"role": "assistant", "content": "A"}],
        "non_preferred_output": [{"role": "assistant", "content": "B"}],
    }
    lines = [
        good,
        {**good, "preferred_output": [{"role": "assistant", "content": "A"}, {"role": "assistant", "content": "C"}]},  # 2: two answers
        {**good, "non_preferred_output": [{"role": "user", "content": "B"}]},  # 3: not an assistant answer
        {**good, "input": {"messages": [{"role": "assistant", "content": "Q"}]}},  # 4: prompt ends with the assistant
        {**good, "input": "Q"},  # 5: input not an object
        {**good, "input": {"messages": [{"role": "user", "content": "Q"}], "tools": [{"type": "function", "function": {"name": "f"}}]}},  # 6
        {**good, "non_preferred_output": [{"role": "assistant", "content": "A"}]},  # 7: both answers the same: a warning
        {**good, "input": {"messages": [{"role": "user", "content": "Q", "name": "x"}]}},  # 8: a key tunesmith does not read
    ]
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    report = validate_file(path)
    found = {(p.line, p.code) for p in report.errors}
    assert found == {
        (2, "invalid_preference_output"),
        (3, "invalid_preference_output"),
        (4, "last_message_not_user"),
        (5, "invalid_input"),
        (6, "unsupported_tools"),
        (8, "message_unrecognized_key"),
    }
    assert [(p.line, p.code) for p in report.warnings] == [(7, "identical_answers")]
    assert report.format == "preference" and not report.ok

    pcr = write_jsonl(
        tmp_path / "pcr.jsonl",
        [
            {"prompt": "Q", "chosen": "A", "rejected": "B"},
            {"prompt": "", "chosen": "A", "rejected": "B"},  # 2
            {"prompt": "Q", "chosen": 3, "rejected": "B"},  # 3
            {
                "chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "x"}],
                "rejected": [{"role": "user", "content": "b"}, {"role": "assistant", "content": "y"}],
            },
        ],
    )
    assert {(p.line, p.code) for p in validate_file(pcr).errors} == {(2, "missing_field"), (3, "invalid_preference_output"), (4, "prompt_mismatch")}

    # prepare refuses the file naming each line, exit 2, no traceback
    result = run_cli(capsys, "data", "prepare", str(path))
    assert result.code == 2 and "Traceback" not in result.err
    for line in (2, 3, 4, 5, 6, 8):
        assert f"bad.jsonl:{line}:" in " ".join(result.err.split())


def test_a_preference_file_is_prepared_into_a_versioned_split_dataset(tmp_path, capsys, home):
    pairs = yes_no_pairs(40)
    rows = [
        *pairs,
        pairs[0],
        {**pairs[1], "rejected": "nope, absolutely never"},
    ]  # an exact repeat (removed) and a pair differing only in its rejected answer (kept)
    source = write_jsonl(tmp_path / "pairs.jsonl", rows)
    result = run_cli(capsys, "data", "prepare", str(source), "--out", "pairs", "--pii", "off")
    assert result.code == 0, result.err
    folder = home / "datasets" / "pairs"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["format"] == "prompt_chosen_rejected"
    dedup = next(s for s in manifest["steps"] if s["step"] == "dedup")
    assert dedup["examples_in"] == 42 and dedup["examples_out"] == 41
    kept = [json.loads(line) for split in ("train", "validation", "test") for line in (folder / f"{split}.jsonl").read_text().splitlines()]
    assert all(k["rejected"]["content"].startswith("no") for k in kept)
    assert sum(k["rejected"]["content"] == "nope, absolutely never" for k in kept) == 1
    assert run_cli(capsys, "data", "prepare", str(source), "--out", "pairs2", "--pii", "off").code == 0
    assert json.loads((home / "datasets" / "pairs2" / "manifest.json").read_text())["version"] == manifest["version"]


# ---------------------------------------------------------------- config


def test_preference_settings_are_checked(tmp_path):
    from pydantic import ValidationError

    from tunesmith.config import RunSpec

    def spec(train: dict) -> RunSpec:
        return RunSpec.model_validate({"data": {"dataset": "x"}, "train": train})

    assert spec({"task": "preference"}).train.preference.strength == 0.1
    assert spec({"task": "preference", "preference": {"objective": "simpo"}}).train.preference.strength == 2.0
    for bad, says in (
        ({"task": "causal_lm", "preference": {"beta": 0.2}}, "train.preference is read by task preference only"),
        ({"task": "preference", "preference": {"betta": 0.2}}, "betta"),
        ({"task": "preference", "preference": {"beta": 0}}, "beta"),
        ({"task": "preference", "preference": {"objective": "kto"}}, "objective"),
    ):
        with pytest.raises(ValidationError, match=says):
            spec(bad)
    with pytest.raises(ValidationError, match="data.replay mixes in examples for causal_lm runs only; remove it for train.task preference"):
        RunSpec.model_validate({"data": {"dataset": "x", "replay": {"dataset": "y"}}, "train": {"task": "preference"}})
    # config.yaml of a supervised run has no preference section; a preference run's shows the objective
    assert "preference" not in spec({}).train.model_dump()
    assert spec({"task": "preference"}).train.model_dump()["preference"]["objective"] == "dpo"


# ---------------------------------------------------------------- training and evaluation


@pytest.fixture(scope="module")
def pairs_home(tmp_path_factory):
    from tunesmith.config import PrepareSpec
    from tunesmith.data.dataset import prepare_dataset
    from tunesmith.workspace import Workspace

    folder = tmp_path_factory.mktemp("pairs-home")
    source = write_jsonl(folder / "pairs.jsonl", yes_no_pairs(80))
    workspace = Workspace.from_env(folder)
    prepare_dataset(source, workspace, name="pairs", seed=0, ratios=(0.6, 0.15, 0.25), options=PrepareSpec(pii="off"))
    return folder


def _train(home: Path, tiny_model: Path, monkeypatch, **train):
    from tunesmith.config import RunSpec
    from tunesmith.train.recipe import train as run_training
    from tunesmith.workspace import Workspace

    monkeypatch.setenv("TUNESMITH_HOME", str(home))
    settings = {"task": "preference", "epochs": 2, "batch_size": 8, "lr": 5e-3, **train}
    spec = RunSpec.model_validate({"model": {"name": str(tiny_model)}, "data": {"dataset": "pairs"}, "train": settings})
    return run_training(spec, Workspace.from_env(home))


def test_dpo_moves_held_out_reward_accuracy_from_half_to_above_080(pairs_home, tiny_model, monkeypatch, capsys):
    result = _train(pairs_home, tiny_model, monkeypatch)
    run_dir = result.run_dir
    assert result.status == "completed"
    reference = json.loads((run_dir / "reference_logps.json").read_text())
    assert set(reference["pairs"]) == {"train", "validation", "test"} and len(reference["pairs"]["train"]) == 48
    checks = validations(run_dir)
    assert {"val_reward_accuracy", "val_reward_margin", "val_chosen_reward", "val_rejected_reward"} <= set(checks[-1])
    assert checks[-1]["val_reward_accuracy"] >= 0.8 and checks[-1]["val_reward_margin"] > 0
    assert train_steps(run_dir)[-1]["loss"] < train_steps(run_dir)[0]["loss"]
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["train"]["task"] == "preference" and config["train"]["preference"]["objective"] == "dpo"

    evaluated = run_cli(capsys, "eval", result.run_id, "--compare-base", "--max-new-tokens", "4", "--no-perplexity", "--metrics", "exact_match")
    assert evaluated.code == 0, evaluated.err
    report = json.loads((run_dir / "eval" / "report.json").read_text())
    tuned, base = report["test"]["tuned"]["metrics"], report["test"]["base"]["metrics"]
    assert base["reward_accuracy"] == 0.5 and base["reward_margin"] == 0.0  # the base is its own reference: every pair a tie
    assert tuned["reward_accuracy"] >= 0.8 and tuned["reward_margin"] > 0
    assert tuned["preference_accuracy"] >= 0.8 and 0 <= base["preference_accuracy"] <= 1
    assert report["headline"]["test"]["metric"] == "reward_accuracy"
    assert report["versus"]["test"]["base"]["reward_accuracy"]["delta"] >= 0.3
    assert "tuned beat base: reward accuracy" in " ".join((evaluated.out + evaluated.err).split())

    class PrefersYes(ChatCompletions):
        """Prefers the answer that starts with "yes", wherever it is shown; a tie when neither or both do."""

        def reply(self, body):
            text = body["messages"][-1]["content"]
            first, _, second = text.partition("[Answer B]")
            a, b = (part.split("]", 1)[-1].strip().lower().startswith("yes") for part in (first.split("[Answer A]")[-1], second))
            return "[[A]]" if a and not b else "[[B]]" if b and not a else "[[C]]"

    with serve(PrefersYes) as url:
        judged = run_cli(capsys, "eval", "judge", result.run_id, "--judge-url", url, "--judge-model", "m", "--pairwise", "base")
    assert judged.code == 0, judged.err
    win = json.loads((run_dir / "eval" / "report.json").read_text())["judge"]["test"]["pairwise-base"]
    assert win["n"] == tuned["n"] and win["win_rate_b"] is not None


@pytest.mark.parametrize(
    ("objective", "method"),
    [("dpo", "full"), ("simpo", "lora"), ("orpo", "lora")],
)
def test_other_objectives_and_methods_learn_the_preference(pairs_home, tiny_model, monkeypatch, objective, method):
    lr = 1e-3 if method == "full" else 5e-3
    result = _train(pairs_home, tiny_model, monkeypatch, method=method, lr=lr, preference={"objective": objective})
    assert result.status == "completed"
    assert validations(result.run_dir)[-1]["val_reward_accuracy"] >= 0.8
    # only DPO reads a reference: the reference-free objectives compute none
    assert (result.run_dir / "reference_logps.json").is_file() == (objective == "dpo")


@pytest.mark.slow  # a launched process that is killed: ~40 s on a busy 2-core machine, most of it the process's imports
def test_a_killed_dpo_run_resumes_exactly_and_reads_its_reference_back(pairs_home, tiny_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TUNESMITH_HOME", str(pairs_home))
    config = tmp_path / "run.yaml"
    # 48 pairs / batch 4 = 12 steps per epoch, 24 in all; validation (and a checkpoint) at 6, 12, 18, 24
    config.write_text(
        f"model: {{name: {tiny_model}}}\ndata: {{dataset: pairs}}\n"
        "train: {task: preference, epochs: 2, batch_size: 4, lr: 5.0e-3, evals_per_epoch: 2, scheduler: cosine, preference: {beta: 0.2}}\n"
    )
    whole = run_cli(capsys, "train", "--config", str(config))
    assert whole.code == 0, whole.err
    uninterrupted = pairs_home / "runs" / run_id_from(whole.out)

    before = {p.name for p in (pairs_home / "runs").iterdir()}
    killed = tunesmith("train", "--config", str(config), kill_at="step:9")  # inside step 9: the last checkpoint is step 6
    assert killed.returncode == -9
    run_dir = only_run(pairs_home, besides=before)
    stored = run_dir / "reference_logps.json"
    written = stored.stat()
    assert "computed with the base weights" in killed.stderr

    done = run_cli(capsys, "train", "--resume", run_dir.name)
    assert done.code == 0, done.err
    said = " ".join(done.err.split())
    assert "resuming at step 6 of 24" in said
    assert "reference log-probabilities read from reference_logps.json (not computed again)" in said
    assert "computed with the base weights" not in said
    assert (stored.stat().st_mtime_ns, stored.stat().st_ino) == (written.st_mtime_ns, written.st_ino)
    assert stored.read_bytes() == (uninterrupted / "reference_logps.json").read_bytes()

    def curve(folder: Path) -> list:
        return [(r["step"], r.get("loss"), r.get("val_loss"), r.get("val_reward_accuracy")) for r in read_metrics(folder) if "event" not in r]

    assert curve(run_dir) == curve(uninterrupted)
    assert [r["event"] for r in read_metrics(run_dir) if "event" in r] == ["resumed"]


def test_a_pair_scores_the_same_in_padded_rows_and_in_one_flat_row(tiny_model, tmp_path):
    """Training lays a batch's sequences end to end with per-example attention; the reference and
    evaluation score padded rows: both must give each answer the same log-probability."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.eval.preference import encode_pairs, pair_tensors, response_logps
    from tunesmith.train.kernels.segments import use_segment_attention

    examples, _ = load_examples(write_jsonl(tmp_path / "p.jsonl", yes_no_pairs(6)))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    pairs, dropped = encode_pairs(tokenizer, examples, 512)
    assert len(pairs) == 6 and not dropped
    with torch.no_grad():
        padded, padded_counts = response_logps(model, pair_tensors(pairs, tokenizer.pad_token_id))
        assert use_segment_attention(model)
        for select_head in (False, True):
            flat, flat_counts = response_logps(model, pair_tensors(pairs, tokenizer.pad_token_id, flat=True), select_head)
            assert torch.equal(flat_counts, padded_counts) and torch.allclose(flat, padded, atol=1e-4)
    # each count is the answer's tokens and its end-of-turn token, nothing of the prompt
    assert padded_counts[0] == len(tokenizer(examples[0].reference + "<|im_end|>", add_special_tokens=False)["input_ids"])


@pytest.mark.slow  # two launched processes
def test_dpo_in_two_processes_trains_what_one_process_trains(pairs_home, tiny_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TUNESMITH_HOME", str(pairs_home))
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {{name: {tiny_model}}}\ndata: {{dataset: pairs}}\ntrain: {{task: preference, epochs: 1, batch_size: 6, lr: 5.0e-3}}\n")
    one = run_cli(capsys, "train", "--config", str(config))
    assert one.code == 0, one.err
    one_dir = pairs_home / "runs" / run_id_from(one.out)
    two = tunesmith("train", "--config", str(config), "--nproc", "2")
    assert two.returncode == 0, two.stderr
    two_dir = pairs_home / "runs" / run_id_from(two.stdout)
    # each process scored half of the pairs for the reference; process 0 wrote them all
    stored = [json.loads((folder / "reference_logps.json").read_text())["pairs"] for folder in (one_dir, two_dir)]
    assert {s: set(v) for s, v in stored[0].items()} == {s: set(v) for s, v in stored[1].items()}
    for split, found in stored[0].items():
        for key, (chosen, rejected) in found.items():
            assert stored[1][split][key] == pytest.approx([chosen, rejected], abs=1e-4)
    for a, b in zip([r["loss"] for r in train_steps(one_dir)], [r["loss"] for r in train_steps(two_dir)], strict=True):
        assert abs(a - b) <= 1e-4 * max(1.0, abs(a))
    assert abs(validations(one_dir)[-1]["val_reward_margin"] - validations(two_dir)[-1]["val_reward_margin"]) <= 1e-3
