"""Random record sets through `data prepare` (clean, PII, dedup, split): every run exits 0 or 2
with a message, never a traceback, and the same input always gives the same dataset version."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from clihelp import run_cli
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

# Text that exercises every step: unicode of all kinds, blanks, mojibake, PII, near-identical answers.
texts = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "",
            " ",
            "\u0007",
            "\u200b",
            "Ã©tÃ©",
            "mail jane@example.com",
            "call +1 415-555-0134",
            "card 4111 1111 1111 1111",
            "Order 12 ships on day 3.",
            "order 12 ships on day 3",
            "1. a\n2. b",
            "Step 1: a",
            '{"team": "IAM"}',
            "<EMAIL>",
        ]
    ),
)
meta_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | texts,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)


def _chat(user, answer, system, label, meta, id_):
    record = {
        "messages": ([{"role": "system", "content": system}] if system is not None else [])
        + [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    }
    for key, value in (("label", label), ("meta", meta), ("id", id_)):
        if value is not None:
            record[key] = value
    return record


labels = st.sampled_from(["a", "A", "b", "jane@example.com", "", " b "]) | st.integers(-2, 2) | texts
metas = meta_values | st.builds(
    lambda g, rest: {"g": g, **rest},
    st.sampled_from(["g1", "g2", "jane@example.com", ""]) | st.integers(0, 3),
    st.dictionaries(st.text(max_size=4), meta_values, max_size=2),
)
chats = st.builds(_chat, texts, texts, st.none() | texts, st.none() | labels, st.none() | metas, st.none() | texts | st.integers())
classified = st.builds(
    lambda text, label, meta: {"text": text, "label": label, **({"meta": meta} if meta is not None else {})}, texts, labels, st.none() | metas
)
records = chats | classified
# Drawn from a small pool, so duplicates and tiny sets are common.
record_sets = st.lists(records, min_size=1, max_size=4).flatmap(lambda pool: st.lists(st.sampled_from(pool), min_size=0, max_size=12))
FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", 30)), deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)


def _prepare(capsys, monkeypatch, source: Path, args: list[str]) -> tuple[int, str, dict | None]:
    home = Path(tempfile.mkdtemp(prefix="home-", dir=source.parent))
    monkeypatch.setenv("TUNESMITH_HOME", str(home))
    ner = "--pii-ner" if os.environ.get("FUZZ_NER") else "--no-pii-ner"  # NER is ~100x slower: off unless asked
    result = run_cli(capsys, "data", "prepare", str(source), "--out", "fuzz", ner, *args)
    assert result.code in (0, 2), result.err
    assert "Traceback" not in result.err
    if result.code == 2:
        assert "error" in result.err.lower() and result.err.strip()
        return result.code, result.err, None
    return result.code, result.err, json.loads((home / "datasets" / "fuzz" / "manifest.json").read_text())


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@FUZZ
@given(
    rows=record_sets,
    given_test=st.none() | record_sets,
    pii=st.sampled_from(["off", "report", "redact", "drop"]),
    normalise=st.booleans(),
    near=st.booleans(),
    group=st.booleans(),
    split=st.sampled_from(["0.8,0.1,0.1", "0.5,0.5,0", "1,0,0", "0.34,0.33,0.33"]),
)
def test_prepare_on_random_records_exits_0_or_2_and_is_reproducible(capsys, monkeypatch, rows, given_test, pii, normalise, near, group, split):
    with tempfile.TemporaryDirectory() as folder:
        source = _write(Path(folder) / "random.jsonl", rows)
        args = [
            "--pii",
            pii,
            "--split",
            split,
            *(["--normalise-outputs"] if normalise else []),
            *([] if near else ["--no-near-dedup"]),
            *(["--group-by", "g"] if group else []),
            *(["--test-file", str(_write(Path(folder) / "given.jsonl", given_test))] if given_test is not None else []),
        ]
        first = _prepare(capsys, monkeypatch, source, args)
        second = _prepare(capsys, monkeypatch, source, args)
        assert first[0] == second[0]
        event(f"exit {first[0]}")  # --hypothesis-show-statistics: how many runs made a dataset
        if first[2] is not None:
            assert (first[2]["version"], first[2]["split_hashes"]) == (second[2]["version"], second[2]["split_hashes"])


# Pieces of personal data and the punctuation around them, glued at random: redaction must not
# leave (or, by joining what is left, create) anything the detectors would find again.
pieces = st.sampled_from(
    [
        "jane@example.com",
        "+1 415-555-0134",
        "4111 1111 1111 1111",
        "078-05-1120",
        "10.24.3.17",
        "AKIAIOSFODNN7EXAMPLE",
        "DE89 3704 0044 0532 0130 00",
        "password=Tr0ub4dor&3",
        "@",
        ".",
        " ",
        "-",
        "+",
        "1",
        "42",
        "com",
        "x",
        "\n",
        "<",
        ">",
    ]
)


@settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", 200)), deadline=None)
@example(parts=[], meta_parts=["+1 415-555-0134", "AKIAIOSFODNN7EXAMPLE"])
@given(parts=st.lists(pieces, max_size=12), meta_parts=st.lists(pieces, max_size=6))
def test_redacted_examples_hold_nothing_the_detectors_find(parts, meta_parts):
    from tunesmith.data.example import Example, Message
    from tunesmith.data.pii import find_pii, scrub_examples, text_fields

    text, meta_text = "".join(parts), "".join(meta_parts)
    example = Example(
        id=text or "x",
        label=meta_text or None,
        meta={"k": [meta_text], meta_text: 1},
        messages=[Message(role="user", content=text or "q"), Message(role="assistant", content=meta_text or "a")],
    )
    (redacted,), _ = scrub_examples([example], "redact", ner=False)
    assert [(where, value) for where, value in text_fields(redacted) if find_pii(value, ner=False)] == []


@FUZZ
@given(rows=record_sets, pii=st.sampled_from(["off", "report", "redact", "drop"]))
def test_what_validate_accepts_prepare_processes(capsys, monkeypatch, rows, pii):
    from tunesmith.data.validate import validate_file

    with tempfile.TemporaryDirectory() as folder:
        source = _write(Path(folder) / "random.jsonl", rows)
        accepted = validate_file(source).ok
        code, err, _ = _prepare(capsys, monkeypatch, source, ["--pii", pii])
        event(f"validate ok {accepted}, prepare exit {code}")
        # --pii drop may leave nothing, and then says so; that is the user's choice, not a gap in validate.
        assert not accepted or code == 0 or (pii == "drop" and "pii removed" in err), err
