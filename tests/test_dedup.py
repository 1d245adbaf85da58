"""Exact and near-duplicate removal on the demo tickets, with planted variants: the rules, stated on the
list-based reference (reference_dedup.py) that test_rows.py checks `data prepare`'s dedup against."""

from __future__ import annotations

import random

import pytest
from reference_dedup import dedup_examples, near_duplicate_pairs

from tunesmith.data.example import Example, Message
from tunesmith.data.formats import to_example
from tunesmith.demo.tickets import generate

FILLERS = ("please", "asap", "really", "again", "now", "today", "also", "kindly", "folks", "urgently")


def tickets(n, seed=0, prefix="t"):
    return [to_example(r, "messages", f"{prefix}{i}") for i, r in enumerate(generate(n, seed))]


def word_edit(text, rng, edits):
    """Substitute, delete or insert whole words: the edits of a re-typed or lightly reworded ticket."""
    words = text.split(" ")
    for _ in range(edits):
        op, i = rng.choice(("sub", "del", "ins")), rng.randrange(len(words))
        if op == "sub":
            words[i] = rng.choice(FILLERS)
        elif op == "del":
            del words[i]
        else:
            words.insert(i, rng.choice(FILLERS))
    return " ".join(words)


def variant(example, new_id, rng, edits=1):
    messages = [m if m.role != "user" else Message(role="user", content=word_edit(m.content, rng, edits)) for m in example.messages]
    return example.model_copy(update={"id": new_id, "messages": messages})


def word_distance(a, b):
    a, b = a.split(), b.split()
    row = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        diag, row[0] = row[0], i
        for j in range(1, len(b) + 1):
            diag, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] != b[j - 1]))
    return row[-1]


# One word edited in a ~20-word ticket keeps Jaccard above the default 0.85; two words put
# the shortest tickets just under it ((n - 2) / (n + 2) = 0.82 at n = 20), hence 0.8 there.
@pytest.mark.parametrize(("edits", "threshold"), [(1, 0.85), (2, 0.8)])
def test_planted_near_duplicates_are_all_found_and_distinct_tickets_kept(edits, threshold):
    originals = tickets(500)
    rng = random.Random(7)
    planted = [variant(originals[i], f"p{i}", rng, edits) for i in rng.sample(range(500), 50)]
    kept, report = dedup_examples(originals + planted, threshold=threshold)
    removed = {p.removed: p for p in report.pairs}
    assert all(p.id in removed and removed[p.id].kept == f"t{p.id[1:]}" for p in planted)
    # The generator's "distinct" means not byte-identical; a ticket it removes among them must
    # itself be within two word edits of the one kept.
    user = {e.id: e.messages[1].content for e in originals}
    for pair in (p for p in report.pairs if p.removed.startswith("t")):
        assert word_distance(user[pair.removed], user[pair.kept]) <= 2, pair
    assert report.exact + report.near == 550 - len(kept) and report.shingles == "word-1"


def test_exact_duplicates_ignore_case_and_whitespace_and_keep_the_first():
    base = tickets(5)
    copy = base[2].model_copy(
        update={"id": "copy", "messages": [Message(role=m.role, content="  " + m.content.upper().replace(" ", "   ")) for m in base[2].messages]}
    )
    kept, report = dedup_examples([*base, copy], near=False)
    assert [e.id for e in kept] == [e.id for e in base]
    assert (report.exact, report.near, report.pairs[0].removed, report.pairs[0].kept) == (1, 0, "copy", "t2")


def test_very_short_texts_use_character_shingles():
    def short(i, text):
        return Example(id=str(i), messages=[Message(role="user", content=text), Message(role="assistant", content="ok")])

    kept, report = dedup_examples([short(0, "Reset my password!"), short(1, "reset my password"), short(2, "cancel my order")])
    assert report.shingles == "char-3" and [e.id for e in kept] == ["0", "2"]


def test_near_duplicate_pairs_between_splits():
    train, test = tickets(200), tickets(40, seed=5, prefix="x")
    rng = random.Random(3)
    leaked = [variant(train[i], f"leak{i}", rng) for i in (3, 50, 120)]
    pairs = near_duplicate_pairs(test + leaked, train, 0.85)
    assert {("leak3", "t3"), ("leak50", "t50"), ("leak120", "t120")} <= set(pairs)
    assert near_duplicate_pairs([], train) == []
