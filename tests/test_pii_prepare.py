"""`data prepare --pii redact|drop` end to end: no byte of detected personal data survives anywhere
under the workspace (datasets, registry, spill folders) or in what the command prints, whichever
file, field or step it came in through."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from clihelp import tunesmith

# Each value is distinctive, so finding it anywhere means it leaked.
EMAIL, PHONE, CARD, PERSON = "jane.roe@example.com", "+1 415-555-0134", "4111 1111 1111 1111", "Maria Gonzalez"
META_EMAIL, META_PHONE, META_PERSON = "meta.person@example.org", "(212) 555-0198", "Emily Chen"
ID_EMAIL, LABEL_EMAIL, DROPPED_ID = "olga.petrov@example.net", "ivan.kuznetsov@example.com", "dropped.user@example.com"
LINT_EMAIL = "anna.berg@example.com"
VAL_EMAIL, VAL_PHONE, TEST_CARD, TEST_PERSON = "val.only@example.com", "646.555.0172", "5500-0000-0000-0004", "Rajesh Patel"
PLANTED = [
    EMAIL,
    PHONE,
    CARD,
    PERSON,
    META_EMAIL,
    META_PHONE,
    META_PERSON,
    ID_EMAIL,
    LABEL_EMAIL,
    DROPPED_ID,
    LINT_EMAIL,
    VAL_EMAIL,
    VAL_PHONE,
    TEST_CARD,
    TEST_PERSON,
]


def _chat(user: str, answer: str, **extra) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}], **extra}


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _planted_files(folder: Path) -> tuple[Path, Path, Path]:
    train = [_chat(f"Order {i} for the dock model K{i} did not arrive, what now?", f"Order {i} ships on day {i % 7}.", label="shipping") for i in range(30)]
    train += [
        _chat(f"Please charge card {CARD} and mail {EMAIL} for order 900.", f"Done, I called {PHONE} to confirm.", label="billing"),
        _chat("Who approved the refund for order 901?", f"Hi, this is {PERSON} from finance, I approved it.", label="billing"),
        _chat(
            "Where is my parcel 902?",
            "It left the depot today.",
            label=LABEL_EMAIL,
            meta={
                "customer": {
                    "contacts": [{"email": META_EMAIL, "notes": [f"call {META_PHONE}"]}],
                    "owner": f"Please escalate to {META_PERSON}, she manages the account.",
                }
            },
        ),
        _chat("Where is parcel 903 now?", "It is at the depot.", id=ID_EMAIL, label="shipping"),
        # Two spellings of one short answer: the clean step's lint lists both.
        _chat("Who do I write to about invoice 904?", f"Mail {LINT_EMAIL}", label="billing"),
        _chat("Who do I write to about invoice 905, again?", f"mail {LINT_EMAIL}.", label="billing"),
        _chat("Tell me about the next order", "\u0007", id=DROPPED_ID),  # empty once cleaned: dropped by clean
    ]
    validation = [_chat(f"Validation question {i} about returns of item R{i}?", f"Return R{i} within {i + 10} days.", label="shipping") for i in range(6)]
    validation.append(_chat(f"Send the label to {VAL_EMAIL} please, item R99.", f"I will text {VAL_PHONE} when it is ready.", label="shipping"))
    test = [_chat(f"Test question {i} about warranty of unit W{i}?", f"Unit W{i} has {i + 1} years of warranty.", label="shipping") for i in range(6)]
    test.append(_chat(f"Refund card {TEST_CARD} for unit W99.", f"{TEST_PERSON} from billing approved the refund.", label="billing"))
    return _write(folder / "train.jsonl", train), _write(folder / "val.jsonl", validation), _write(folder / "test.jsonl", test)


def _leaks(home: Path, printed: str) -> dict[str, list[str]]:
    """planted value -> where it was found (files under home, read as bytes, and the output)."""
    found: dict[str, list[str]] = {}
    places = {str(p.relative_to(home)): p.read_bytes() for p in home.rglob("*") if p.is_file()}
    for value in PLANTED:
        for where, data in places.items():
            if value.encode() in data or value.encode("utf-16-le") in data:
                found.setdefault(value, []).append(where)
        # The terminal wraps long lines: compare with all whitespace (and table borders) taken out.
        if "".join(value.split()) in "".join(printed.replace("│", "").split()):
            found.setdefault(value, []).append("output")
    return found


@pytest.mark.parametrize("mode,more", [("redact", []), ("drop", []), ("redact", ["--normalise-outputs"])])
def test_prepare_leaves_no_planted_pii_anywhere(home, tmp_path, mode, more):
    train, validation, test = _planted_files(tmp_path)
    done = tunesmith(
        "data",
        "prepare",
        str(train),
        "--validation-file",
        str(validation),
        "--test-file",
        str(test),
        "--pii",
        mode,
        "--out",
        "planted",
        "--no-near-dedup",
        *more,
    )
    assert done.returncode == 0, done.stderr
    assert _leaks(home, done.stdout + done.stderr) == {}
    folder = home / "datasets" / "planted"
    manifest = json.loads((folder / "manifest.json").read_text())
    pii = next(s for s in manifest["steps"] if s["step"] == "pii")["report"]
    assert pii["counts"]["EMAIL"] >= 7 and pii["counts"]["PERSON"] >= 3 and pii["counts"]["CREDIT_CARD"] == 2
    splits = {s: [json.loads(line) for line in (folder / f"{s}.jsonl").read_text().splitlines()] for s in ("train", "validation", "test")}
    if mode == "redact":
        # Every example is kept, personal data replaced by its type wherever it was.
        assert len(splits["validation"]) == 7 and len(splits["test"]) == 7
        text = json.dumps(splits)
        assert "<EMAIL>" in text and "<PERSON>" in text and "<CREDIT_CARD>" in text
        redacted_meta = next(e["meta"] for e in splits["train"] + splits["validation"] + splits["test"] if e["meta"])
        assert redacted_meta["customer"]["contacts"][0]["email"] == "<EMAIL>"
    else:
        # Examples with personal data anywhere are left out, from the given files too.
        assert len(splits["validation"]) == 6 and len(splits["test"]) == 6
        assert not any(e["meta"] for s in splits.values() for e in s)


# ------------------------------------------------------------ what is found, shown before it is redacted


def _brand_file(folder: Path) -> Path:
    records = [_chat(f"How do I sync order {i} with my phone?", f"Open the Velora app and tap Sync for order {i}.") for i in range(20)]
    records.append(_chat("Who signed off on order 99?", "Hi, this is Maria Gonzalez from finance, I signed it."))
    return _write(folder / "support.jsonl", records)


def test_pii_report_shows_what_ner_found_and_allow_keeps_a_brand(capsys, home, tmp_path):
    from clihelp import run_cli

    source = _brand_file(tmp_path)
    found = run_cli(capsys, "data", "prepare", str(source), "--pii", "report", "--out", "seen", "--no-near-dedup")
    assert found.code == 0, found.err
    # Report mode changes nothing, so it shows the names NER found: the brand is recognisable as a false positive.
    assert "PERSON: 'Velora' x20, 'Maria Gonzalez' x1" in found.err and "--pii-allow" in found.err
    pii = next(s for s in json.loads((home / "datasets" / "seen" / "manifest.json").read_text())["steps"] if s["step"] == "pii")["report"]
    assert pii["counts"]["PERSON"] == 21 and pii["examples"]["PERSON"] == {"Velora": 20, "Maria Gonzalez": 1}

    (tmp_path / "allow.txt").write_text("# our products\nVelora\n", encoding="utf-8")
    for allow in (["--pii-allow", "Velora"], ["--pii-allow", "LN-3 press,velora"], ["--pii-allow", f"@{tmp_path / 'allow.txt'}"]):
        redacted = run_cli(capsys, "data", "prepare", str(source), "--pii", "redact", "--out", f"kept-{len(allow[1])}", "--no-near-dedup", *allow)
        assert redacted.code == 0, redacted.err
        folder = home / "datasets" / f"kept-{len(allow[1])}"
        text = "".join((folder / f"{s}.jsonl").read_text() for s in ("train", "validation", "test"))
        assert text.count("Open the Velora app") == 20 and "<PERSON> from finance" in text and "Maria" not in text
        # Under redact the summary masks what it lists: it must not print the name it removed.
        assert "PERSON: 'M***z' x1" in redacted.err and "Maria" not in redacted.out + redacted.err


def test_an_unreadable_allowlist_file_is_a_usage_error(capsys, home, tmp_path):
    from clihelp import run_cli

    result = run_cli(capsys, "data", "prepare", str(_brand_file(tmp_path)), "--pii-allow", f"@{tmp_path / 'missing.txt'}")
    assert result.code == 2 and "missing.txt" in result.err and "--pii-allow" in result.err
    assert not (home / "datasets").exists() or not any((home / "datasets").iterdir())


def test_validate_pii_lists_findings_per_type_and_honours_the_allowlist(capsys, tmp_path):
    from clihelp import run_cli

    source = _brand_file(tmp_path)
    found = run_cli(capsys, "data", "validate", str(source), "--pii", "--json")
    assert found.code == 0  # warnings: the file is valid, personal data is for prepare to handle
    warnings = [w for w in json.loads(found.out)["warnings"] if w["code"] == "personal_data"]
    assert [w["line"] for w in warnings] == [1] and "21 PERSON" in warnings[0]["message"] and "'Velora' x20" in warnings[0]["message"]
    allowed = run_cli(capsys, "data", "validate", str(source), "--pii", "--pii-allow", "Velora", "--json")
    warnings = [w for w in json.loads(allowed.out)["warnings"] if w["code"] == "personal_data"]
    assert [w["line"] for w in warnings] == [21] and "1 PERSON" in warnings[0]["message"]
    assert "personal_data" not in run_cli(capsys, "data", "validate", str(source), "--json").out  # only when asked


def test_a_file_emptied_by_drop_is_refused_not_registered_empty(capsys, home, tmp_path):
    from clihelp import run_cli

    # Found by tests/test_prepare_fuzz.py: this registered a dataset of 0 examples and exited 0.
    source = _write(tmp_path / "all.jsonl", [_chat(f"Mail me at user{i}@example.com about order {i}", "Will do.") for i in range(3)])
    result = run_cli(capsys, "data", "prepare", str(source), "--pii", "drop", "--no-pii-ner")
    assert result.code == 2 and "no example of" in result.err and "pii removed 3" in result.err and "--pii redact" in result.err
    assert "user0@example.com" not in result.out + result.err
    assert not (home / "datasets" / "all").exists()
