"""Grouped splits, user-given splits, and near-duplicate leak removal: the rules, stated on the list-based
reference (reference_split.py) that test_rows.py checks `data prepare`'s split against."""

from __future__ import annotations

import random

import pytest
from reference_split import assign_given_splits, remove_leaks, remove_leaks_detailed, split_examples

from tunesmith.data.example import Example, Message
from tunesmith.data.formats import to_example
from tunesmith.demo.tickets import generate
from tunesmith.errors import UserError


def tickets(n, seed=0, prefix="t"):
    return [to_example(r, "messages", f"{prefix}{i}") for i, r in enumerate(generate(n, seed))]


def test_grouped_split_never_lets_a_group_straddle_splits():
    examples = [e.model_copy(update={"meta": {"user": f"u{i % 37}"}}) for i, e in enumerate(tickets(400))]
    splits = split_examples(examples, (0.8, 0.1, 0.1), seed=1, group_by="user")
    owners = {}
    for name, part in splits.items():
        for e in part:
            assert owners.setdefault(e.meta["user"], name) == name
    assert sum(map(len, splits.values())) == 400
    assert all(25 <= len(splits[s]) <= 55 for s in ("validation", "test"))  # whole groups of ~11 near 40
    assert splits == split_examples(list(reversed(examples)), (0.8, 0.1, 0.1), seed=1, group_by="user")


def test_a_missing_group_key_names_the_example():
    examples = [e.model_copy(update={"meta": {"user": "a"}}) for e in tickets(3)]
    examples[1] = examples[1].model_copy(update={"meta": {}})
    with pytest.raises(UserError, match="example 't1' has no meta.user"):
        split_examples(examples, (0.8, 0.1, 0.1), seed=0, group_by="user")


def test_given_splits_are_kept_as_given_and_only_missing_ones_are_carved():
    train, test = tickets(100), tickets(7, seed=9, prefix="given")
    splits = assign_given_splits(train, test=test, ratios=(0.8, 0.1, 0.1), seed=0)
    assert splits["test"] == test
    assert len(splits["validation"]) == pytest.approx(100 * 0.1 / 0.9, abs=6)
    assert sorted(e.id for e in splits["train"] + splits["validation"]) == sorted(e.id for e in train)
    both = assign_given_splits(train, validation=test[:3], test=test[3:], seed=0)
    assert sorted(e.id for e in both["train"]) == sorted(e.id for e in train)
    assert both["validation"] == test[:3] and both["test"] == test[3:]


def test_planted_near_duplicate_leaks_are_all_removed_and_reported():
    train, test = tickets(300), tickets(30, seed=4, prefix="x")
    rng = random.Random(2)
    leaks = []
    for i in rng.sample(range(300), 10):
        user = train[i].messages[1].content.split(" ")
        user.insert(rng.randrange(len(user)), "please")
        messages = [train[i].messages[0], Message(role="user", content=" ".join(user)), train[i].messages[2]]
        leaks.append(Example(id=f"leak-{i}", messages=messages))
    splits = {"train": train, "validation": [], "test": test + leaks}
    exact_only = {k: list(v) for k, v in splits.items()}
    assert remove_leaks(exact_only) == {"validation": 0, "test": 0}  # a reworded copy is not an exact leak
    report = remove_leaks_detailed(splits, near_threshold=0.85)
    assert {p.removed for p in report.pairs} == {e.id for e in leaks}
    assert all(p.train_id == f"t{p.removed.split('-')[1]}" for p in report.pairs)
    assert [e.id for e in splits["test"]] == [e.id for e in test]
    assert report.removed == {"validation": 0, "test": 10}
