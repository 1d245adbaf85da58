"""Reading user files, splitting by seed, versioning, and the leak check."""

from __future__ import annotations

import json

import pytest

from tunesmith.config import PrepareSpec
from tunesmith.data.dataset import load_dataset, prepare_dataset
from tunesmith.data.formats import load_examples
from tunesmith.errors import ProblemList, UserError
from tunesmith.workspace import Workspace


def write_lines(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("record", "fmt"),
    [
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}, "messages"),
        ({"prompt": "q", "completion": "a"}, "prompt_completion"),
        ({"input_text": "q", "output_text": "a"}, "input_output"),
    ],
)
def test_formats_are_detected_and_normalised_to_the_same_example(tmp_path, record, fmt):
    examples, detected = load_examples(write_lines(tmp_path / "d.jsonl", [record]))
    assert detected == fmt
    assert [(m.role, m.content) for m in examples[0].messages] == [("user", "q"), ("assistant", "a")]


def test_every_bad_line_is_reported_with_its_number(tmp_path):
    good = {"prompt": "q", "completion": "a"}
    path = write_lines(tmp_path / "bad.jsonl", [good, "{not json", good, {"prompt": "q"}, json.dumps([1, 2]), good])
    with pytest.raises(ProblemList) as caught:
        load_examples(path)
    text = caught.value.render()
    assert f"{path}:2: not valid JSON" in text
    assert f"{path}:4:" in text and f"{path}:5:" in text
    assert len(caught.value.problems) == 3


def test_split_is_deterministic_stratified_and_leak_free(tmp_path, tickets_file):
    ws = Workspace.from_env(tmp_path / "ws")
    first = prepare_dataset(tickets_file, ws, name="a", seed=3)
    second = prepare_dataset(tickets_file, ws, name="b", seed=3)
    other_seed = prepare_dataset(tickets_file, ws, name="c", seed=4)
    assert first.version == second.version and first.manifest.split_hashes == second.manifest.split_hashes
    assert first.manifest.split_hashes != other_seed.manifest.split_hashes
    assert sum(first.manifest.counts.values()) == 60
    assert first.manifest.overlap.clean
    assert {e.label for e in first.splits["train"]} == {e.label for e in first.splits["test"]}  # every team in both
    reloaded = load_dataset(ws, "a")
    assert [e.id for e in reloaded.splits["test"]] == [e.id for e in first.splits["test"]]


def test_a_test_prompt_that_also_appears_in_train_is_removed(tmp_path):
    # The same question with two different answers: exact dedup keeps both, so the leak check must catch it.
    records = [{"prompt": f"question {i}", "completion": f"answer {i}"} for i in range(40)]
    records += [{"prompt": f"question {i}", "completion": f"other answer {i}"} for i in range(40)]
    ws = Workspace.from_env(tmp_path / "ws")
    dataset = prepare_dataset(write_lines(tmp_path / "dup.jsonl", records), ws, seed=0)
    train_prompts = {e.messages[0].content for e in dataset.splits["train"]}
    assert not any(e.messages[0].content in train_prompts for e in dataset.splits["test"] + dataset.splits["validation"])
    assert dataset.manifest.removed["test_leaked_into_train"] + dataset.manifest.removed["validation_leaked_into_train"] > 0


def test_datasets_are_immutable(tmp_path, tickets_file):
    ws = Workspace.from_env(tmp_path / "ws")
    prepare_dataset(tickets_file, ws, name="t")
    with pytest.raises(UserError, match="already exists with another version"):
        prepare_dataset(tickets_file, ws, name="t", seed=9)
    assert load_dataset(ws, "t").manifest.seed == 0  # the original is untouched


def test_a_changed_file_without_a_chosen_name_gets_a_versioned_name(tmp_path, tickets_file):
    ws = Workspace.from_env(tmp_path / "ws")
    first = prepare_dataset(tickets_file, ws)
    tickets_file.write_text(tickets_file.read_text() + json.dumps({"prompt": "new q", "completion": "new a"}) + "\n")
    with pytest.raises(ProblemList):  # mixed formats are refused, not guessed
        prepare_dataset(tickets_file, ws)
    lines = tickets_file.read_text().splitlines()[:-2]
    tickets_file.write_text("\n".join(lines) + "\n")
    second = prepare_dataset(tickets_file, ws)
    assert first.name == "tickets" and second.name == f"tickets-{second.version}" and second.version != first.version
    assert load_dataset(ws, "tickets").version == first.version


def test_an_evaluation_label_never_seen_in_training_is_warned_about(tmp_path):
    records = [{"text": f"sample number {i}", "label": "common"} for i in range(30)]
    given_test = [{"text": "an unusual request", "label": "rare"}, {"text": "a usual request", "label": "common"}]
    ws = Workspace.from_env(tmp_path / "ws")
    options = PrepareSpec(pii="off", near_dedup=False, test_file=write_lines(tmp_path / "test.jsonl", given_test))
    dataset = prepare_dataset(write_lines(tmp_path / "c.jsonl", records), ws, options=options)
    assert [e.label for e in dataset.splits["test"]] == ["rare", "common"]  # a given test split is kept as given
    assert dataset.manifest.warnings[0] == "label_unseen_in_train: test has label(s) rare that no training example has"
