"""Text repair, whitespace rules, and the answer-consistency lint."""

from __future__ import annotations

import json

from tunesmith.data.clean import clean_examples, normalise_whitespace, repair_unicode
from tunesmith.data.example import Example, Message


def ex(i, user, answer, label=None, system=None):
    messages = ([Message(role="system", content=system)] if system else []) + [Message(role="user", content=user), Message(role="assistant", content=answer)]
    return Example(id=f"e{i}", messages=messages, label=label)


def test_mojibake_is_repaired_but_quotes_and_entities_are_left_alone():
    assert repair_unicode("cafÃ© crÃ¨me") == "café crème"
    assert repair_unicode("“curly” &amp; <b>") == "“curly” &amp; <b>"


def test_whitespace_rules_keep_structure_meaningful():
    text = "  Hello   world\t\tthere  \r\n\r\n\r\n\n- a  b\n    - nested   item\n```\nx  =  1   \n\n\n  y\n```\n\n"
    assert normalise_whitespace(text) == "Hello world there\n\n- a b\n    - nested item\n```\nx  =  1   \n\n\n  y\n```"
    assert normalise_whitespace("    indented code\nnext") == "    indented code\nnext"


def test_clean_counts_repairs_and_drops_examples_that_become_empty():
    examples = [ex(0, "cafÃ©?", "yes"), ex(1, "a   b", "c\r\nd"), ex(2, "   \n ", "answer"), ex(3, "fine", "fine")]
    cleaned, report = clean_examples(examples)
    assert [e.id for e in cleaned] == ["e0", "e1", "e3"]
    assert cleaned[0].messages[0].content == "café?"
    assert [m.content for m in cleaned[1].messages] == ["a b", "c\nd"]
    assert (report.repaired_unicode, report.whitespace_changed, report.dropped_empty) == (1, 2, 1)
    assert report.dropped_ids == ["e2"]
    assert cleaned[2] is examples[3]  # untouched examples are passed through as they were


def test_lint_finds_mixed_list_styles_with_counts_and_ids():
    answers = ["1. open\n2. close"] * 3 + ["1) open\n2) close", "Step 1: open\nStep 2: close", "- open\n- close"]
    _, report = clean_examples([ex(i, "how?", a) for i, a in enumerate(answers)])
    (finding,) = [f for f in report.findings if f.kind == "list_style"]
    assert finding.canonical == "1."
    assert {v.text: (v.count, v.example_ids) for v in finding.variants} == {
        "1.": (3, ["e0", "e1", "e2"]),
        "1)": (1, ["e3"]),
        "Step 1:": (1, ["e4"]),
        "- ": (1, ["e5"]),
    }


def test_label_spellings_are_reported_and_normalised_to_the_most_common_when_asked():
    answers = ["Billing"] * 3 + ["billing", "BILLING ", "Billing.", "Shipping", "Shipping"]
    examples = [ex(i, f"q{i}", a, label=a.strip()) for i, a in enumerate(answers)]
    kept, report = clean_examples(examples)
    (finding,) = [f for f in report.findings if f.kind == "label_spelling"]
    assert finding.canonical == "Billing" and sum(v.count for v in finding.variants) == 6
    assert {v.text for v in finding.variants} == {"Billing", "billing", "BILLING", "Billing."}
    assert kept[3].reference == "billing"  # reporting alone changes nothing

    fixed, report = clean_examples(examples, normalise_outputs=True)
    assert [e.reference for e in fixed] == ["Billing"] * 6 + ["Shipping"] * 2
    assert [e.label for e in fixed] == ["Billing"] * 6 + ["Shipping"] * 2
    assert report.normalised == 3


def test_json_answer_values_are_normalised_per_key_keeping_the_layout():
    teams = ["FINOPS", "FINOPS", "finops", "Fin-Ops", "IAM"]
    examples = [ex(i, f"t{i}", json.dumps({"team": t, "note": "x"}, indent=1)) for i, t in enumerate(teams)]
    _, report = clean_examples(examples)
    (finding,) = [f for f in report.findings if f.kind == "json_value"]
    assert finding.key == "team" and finding.canonical == "FINOPS" and len(finding.variants) == 3
    fixed, _ = clean_examples(examples, normalise_outputs=True)
    assert [json.loads(e.reference)["team"] for e in fixed] == ["FINOPS"] * 4 + ["IAM"]
    assert fixed[2].reference == json.dumps({"team": "FINOPS", "note": "x"}, indent=1)
