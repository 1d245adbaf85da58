"""The streaming prepare (spill file + columns, numpy LSH) against the list-based steps and datasketch."""

from __future__ import annotations

import json
import random
import tracemalloc

import numpy as np
import pytest
from datasketch import MinHash, MinHashLSH
from reference_dedup import dedup_examples, dedup_text
from reference_split import check_overlap, remove_leaks_detailed, split_examples

from tunesmith.config import PrepareSpec
from tunesmith.data import nearlsh
from tunesmith.data.clean import clean_examples
from tunesmith.data.dataset import prepare_dataset
from tunesmith.data.dedup import LSH_MARGIN, Shingler, near_duplicates_in_order
from tunesmith.data.example import Message, content_hash
from tunesmith.data.formats import load_examples, to_example
from tunesmith.data.nearlsh import jaccard
from tunesmith.data.pii import scrub_examples
from tunesmith.data.validate import validate_file
from tunesmith.demo.tickets import generate
from tunesmith.workspace import Workspace

FILLERS = ("please", "asap", "really", "again", "today")


def _edit_user(record: dict, rng: random.Random) -> dict:
    messages = [dict(m) for m in record["messages"]]
    words = messages[1]["content"].split(" ")
    words[rng.randrange(len(words))] = rng.choice(FILLERS)
    messages[1]["content"] = " ".join(words)
    return {**record, "messages": messages}


def _tricky_records(n: int = 400) -> list[dict]:
    """Tickets with exact copies (case and spacing changed), near copies, and reworded prompts with
    another answer: these survive dedup and must be caught by the leak check."""
    rng = random.Random(5)
    records = generate(n, seed=2)
    out = []
    for i, record in enumerate(records):
        out.append(record)
        if i % 17 == 0:
            out.append({**record, "messages": [{**m, "content": "  " + m["content"].upper()} for m in record["messages"]]})
        if i % 11 == 0:
            out.append(_edit_user(record, rng))
        if i % 7 == 0:
            leaked = _edit_user(record, rng)
            leaked["messages"][2]["content"] = json.dumps({"team": "NONE", "priority": "low", "product": "other", "note": "a different answer"})
            out.append(leaked)
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_streamed_prepare_equals_the_list_based_steps(tmp_path, seed):
    path = tmp_path / "tricky.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _tricky_records()), encoding="utf-8")
    dataset = prepare_dataset(path, Workspace.from_env(tmp_path / "ws"), seed=seed, options=PrepareSpec(pii_ner=False))

    examples, _ = load_examples(path)
    examples, _ = clean_examples(examples)
    examples, _ = scrub_examples(examples, "report", ner=False)
    examples, dedup_report = dedup_examples(examples, seed=seed)
    splits = split_examples(examples, (0.8, 0.1, 0.1), seed)
    leaks = remove_leaks_detailed(splits, 0.85)

    manifest = dataset.manifest
    assert dedup_report.near > 0 and sum(leaks.near.values()) > 0  # the data exercises both
    assert manifest.split_hashes == {name: content_hash(split) for name, split in splits.items()}
    assert manifest.overlap == check_overlap(splits)
    assert [s.report for s in manifest.steps if s.step == "dedup"] == [dedup_report.model_dump(mode="json")]
    assert [s.report for s in manifest.steps if s.step == "leakage"] == [leaks.model_dump(mode="json")]
    written = (dataset.path / "test.jsonl").read_text(encoding="utf-8")
    assert written == "".join(e.model_dump_json() + "\n" for e in splits["test"])


def _datasketch_dedup(sets: list[set[str]], threshold: float, seed: int) -> list[tuple[int, int, float]]:
    """The previous implementation: MinHashLSH over kept examples, exact Jaccard on candidates."""
    lsh = MinHashLSH(threshold=max(0.05, threshold - LSH_MARGIN), num_perm=128)
    found = []
    for j, shingles in enumerate(sets):
        minhash = MinHash(num_perm=128, seed=seed)
        minhash.update_batch([s.encode() for s in shingles])
        best = None
        for i in lsh.query(minhash):
            score = jaccard(shingles, sets[i])
            if score >= threshold and (best is None or (score, -i) > (best[1], -best[0])):
                best = (i, score)
        if best is None:
            lsh.insert(j, minhash)
        else:
            found.append((j, best[0], best[1]))
    return found


@pytest.mark.parametrize(("threshold", "seed"), [(0.85, 0), (0.7, 3), (0.5, 0)])
def test_numpy_lsh_finds_exactly_what_datasketch_finds(threshold, seed):
    rng = random.Random(9)
    records = generate(600, seed=4)
    records += [_edit_user(records[rng.randrange(600)], rng) for _ in range(80)]
    shingler = Shingler("word", 1)
    sets = [shingler(dedup_text(to_example(r, "messages", str(i)))) for i, r in enumerate(records)]
    ours = near_duplicates_in_order(sets, lambda idx: {i: sets[i] for i in idx}, threshold, seed=seed)
    assert len(ours) >= 60 and ours == _datasketch_dedup(sets, threshold, seed)


def test_minhash_rows_equal_datasketch_minhash():
    sets = [{"a", "b", "c"}, {"x"}, {f"w{i}" for i in range(300)}]
    values, _, sizes = nearlsh.Sketcher(0.7, 128, seed=7).minhashes(sets)
    for row, shingles in zip(values, sets):
        reference = MinHash(num_perm=128, seed=7)
        reference.update_batch([s.encode() for s in shingles])
        assert np.array_equal(row, reference.hashvalues)
    assert sizes.tolist() == [3, 1, 300]


def test_the_signature_bound_never_rules_out_a_similar_pair():
    rng = random.Random(1)
    vocabulary = [f"w{i}" for i in range(400)]
    sets = []
    for _ in range(300):
        base = set(rng.sample(vocabulary, rng.randint(3, 120)))
        sets += [base, (base - set(rng.sample(sorted(base), min(len(base), rng.randint(0, 4))))) | set(rng.sample(vocabulary, rng.randint(0, 4)))]
    sets = [s or {"empty"} for s in sets]
    sketches = nearlsh.Sketcher(0.7).sketch(sets)
    a, b = np.arange(0, len(sets), 2), np.arange(1, len(sets), 2)
    for threshold in (0.5, 0.7, 0.85, 0.95):
        reach = nearlsh._may_reach(sketches, a, sketches, b, threshold)
        truth = np.array([jaccard(sets[i], sets[j]) >= threshold for i, j in zip(a, b)])
        assert not (truth & ~reach).any()
        assert (reach & ~truth).sum() < max(5, truth.sum())  # and it prunes


def _peak_bytes(run) -> int:
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _write_tickets(path, n):
    path.write_text("".join(json.dumps(r) + "\n" for r in generate(n, seed=1)), encoding="utf-8")
    return path


def test_validate_memory_does_not_grow_with_the_file(tmp_path):
    small, large = _write_tickets(tmp_path / "small.jsonl", 2_000), _write_tickets(tmp_path / "large.jsonl", 20_000)
    growth = _peak_bytes(lambda: validate_file(large)) - _peak_bytes(lambda: validate_file(small))
    # 18,000 more lines (~8 MB more text): only the exact-duplicate digests may grow.
    assert growth < 0.25 * (large.stat().st_size - small.stat().st_size), growth


def test_prepare_keeps_compact_rows_not_examples_in_memory(tmp_path):
    small, large = _write_tickets(tmp_path / "small.jsonl", 1_000), _write_tickets(tmp_path / "large.jsonl", 5_000)
    options = PrepareSpec(pii_ner=False)

    def prepare(path):
        return lambda: prepare_dataset(path, Workspace.from_env(tmp_path / path.stem), options=options)

    growth = _peak_bytes(prepare(large)) - _peak_bytes(prepare(small))
    # The in-memory design held ~12 KB an example; the columns and sketches are a few hundred bytes.
    assert growth / 4_000 < 1_500, growth / 4_000


def test_messages_with_a_weight_round_trip_through_the_spill_file(tmp_path):
    record = {
        "messages": [
            {"role": "user", "content": "q é"},
            {"role": "assistant", "content": "a", "weight": 0},
            {"role": "user", "content": "again"},
            {"role": "assistant", "content": "b"},
        ],
        "meta": {"n": 1.5e20},
    }
    path = tmp_path / "w.jsonl"
    path.write_text(
        "".join(
            json.dumps(
                {
                    **record,
                    "id": f"x{i}",
                    "messages": [*record["messages"][:2], {"role": "user", "content": f"again {i}"}, {"role": "assistant", "content": f"b{i}"}],
                }
            )
            + "\n"
            for i in range(30)
        ),
        encoding="utf-8",
    )
    dataset = prepare_dataset(path, Workspace.from_env(tmp_path / "ws"), options=PrepareSpec(pii="off", near_dedup=False))
    loaded = [e for split in dataset.splits.values() for e in split]
    assert len(loaded) == 30 and all(e.messages[1] == Message(role="assistant", content="a", weight=0.0) for e in loaded)
    assert loaded[0].meta == {"n": 1.5e20}


FRAGMENTS = (
    " ",
    "  ",
    "\n",
    "\n\n",
    "\n\n\n",
    "\t",
    "\r\n",
    "\r",
    "\u00a0",
    "\x0b",
    "\x0c",
    "\x1b[31m",
    "\x00",
    "\x7f",
    "a",
    "bc",
    "```",
    "~~~",
    "    x",
    "-",
    " \n",
    "\n ",
    "ok.",
)


def test_the_fast_paths_of_clean_change_nothing_the_full_repairs_would_not():
    import ftfy

    from tunesmith.data.clean import _FTFY, _tidy, normalise_whitespace, repair_unicode

    rng = random.Random(0)
    for _ in range(20_000):
        text = "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(0, 10)))
        assert normalise_whitespace(text) == _tidy(text), repr(text)
        assert repair_unicode(text) == ftfy.fix_text(text, _FTFY), repr(text)


def test_pii_pattern_hints_never_skip_a_finding(monkeypatch):
    import dataclasses

    from tunesmith.data import pii

    bits = [
        "jane.doe@example.com",
        "+44 20 7946 0958",
        "(555) 234-5678",
        "4111 1111 1111 1111",
        "4111111111111111",
        "GB82 WEST 1234 5698 7654 32",
        "123-45-6789",
        "192.168.1.20",
        "fe80::1ff:fe23:4567:890a",
        "::ffff:10.0.0.1",
        "AKIAIOSFODNN7EXAMPLE",
        "sk-proj-abc123def456ghi789jkl012",
        "sk_live_abcdefghijklmnop1234",
        "ghp_" + "a1" * 20,
        "xoxb-1234567890-abc",
        "api_key=abcd1234",
        "password: hunter2!",
        "PASSWORD = 'secret99'",
        "Bearer_Token: abcd12345",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.abcdefghijk",
        "version 10.2.0.1",
        "٣٤٥-٦٧٨٩",
        "ＡＰＩ_key=abc12345",
    ]
    rng = random.Random(1)
    texts = [" ".join(rng.choice(bits) if rng.random() < 0.4 else rng.choice(["hi", "42", "-", ".", "\n", ":", "="]) for _ in range(6)) for _ in range(3_000)]
    hinted = [pii._regex_findings(t) for t in texts]
    monkeypatch.setattr(pii, "PATTERNS", tuple(dataclasses.replace(p, needs=None) for p in pii.PATTERNS))
    assert hinted == [pii._regex_findings(t) for t in texts] and sum(map(bool, hinted)) > 2_000
