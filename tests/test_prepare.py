"""`tunesmith data prepare` end to end: every step runs, reports, and lands in the manifest."""

from __future__ import annotations

import json

from clihelp import run_cli

PLANTED = ["jane.doe@example.com", "4111 1111 1111 1111", "GB82 WEST 1234 5698 7654 32", "123-45-6789", "192.168.1.20", "AKIAIOSFODNN7EXAMPLE"]


def write_records(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_prepare_redacts_dedups_groups_and_writes_its_report(capsys, home, tmp_path):
    records = []
    for i in range(60):
        secret = PLANTED[i % len(PLANTED)] if i % 5 == 0 else ""
        records.append({"messages": [{"role": "user", "content": f"Customer {i % 12} asks about order {i * 7} {secret}".strip()},
                                     {"role": "assistant", "content": f"Order {i * 7} ships  on day {i % 9}."}],
                        "meta": {"customer_id": f"c{i % 12}"}})
    records.append(records[3])  # an exact duplicate
    source = write_records(tmp_path / "orders.jsonl", records)
    result = run_cli(capsys, "data", "prepare", str(source), "--pii", "redact", "--no-pii-ner", "--group-by", "customer_id", "--out", "orders")
    assert result.code == 0, result.err
    folder = home / "datasets" / "orders"
    text = "".join((folder / f"{s}.jsonl").read_text() for s in ("train", "validation", "test"))
    assert not any(p in text for p in PLANTED) and "<EMAIL>" in text and "<US_SSN>" in text
    assert "ships on day" in text  # whitespace normalised by the clean step
    manifest = json.loads((folder / "manifest.json").read_text())
    assert [s["step"] for s in manifest["steps"]] == ["clean", "pii", "dedup", "leakage"]
    assert manifest["removed"]["dedup"] >= 1 and manifest["settings"]["group_by"] == "customer_id"
    groups = {s: {json.loads(line)["meta"]["customer_id"] for line in (folder / f"{s}.jsonl").read_text().splitlines()} for s in ("train", "validation", "test")}
    assert not (groups["train"] & groups["test"]) and not (groups["train"] & groups["validation"])
    assert (folder / "report.html").is_file() and "Overlap check" in (folder / "report.html").read_text()


def test_stats_of_a_file_and_of_a_dataset(capsys, home, tickets_file):
    assert run_cli(capsys, "data", "prepare", str(tickets_file), "--pii", "off", "--out", "t").code == 0
    for source in ("t", str(tickets_file)):
        result = run_cli(capsys, "data", "stats", source)
        assert result.code == 0 and "labels" in result.out and "IAM" in result.out
    assert run_cli(capsys, "data", "stats", "no-such-dataset").code == 2
