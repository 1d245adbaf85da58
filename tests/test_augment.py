"""Paraphrase augmentation: synthetic examples are marked, filtered, reviewed and kept out of evaluation."""

from __future__ import annotations

import json
import zlib

import pytest
from chatserver import ChatCompletions, serve
from clihelp import run_cli

from tunesmith.data.augment import rejection


class _Paraphraser(ChatCompletions):
    """Rewords by a fixed rule and, for about one message in three, drops the product code, which the
    filter must catch. The choice follows the text, not the arrival order: requests come in parallel."""

    def reply(self, body: dict) -> str | None:
        text = body["messages"][-1]["content"]
        return f"Rephrased: {text}" if zlib.crc32(text.encode()) % 3 else "Something is broken, please help."


@pytest.fixture()
def paraphrase_server():
    with serve(_Paraphraser) as url:
        yield url


def test_endpoint_paraphrases_join_train_only_and_are_listed_for_review(capsys, home, tickets_file, paraphrase_server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    result = run_cli(
        capsys,
        "data",
        "prepare",
        str(tickets_file),
        "--out",
        "aug",
        "--pii",
        "off",
        "--augment",
        "1",
        "--augment-url",
        paraphrase_server,
        "--augment-endpoint-model",
        "para-1",
    )
    assert result.code == 0, result.err
    folder = home / "datasets" / "aug"
    manifest = json.loads((folder / "manifest.json").read_text())
    step = next(s for s in manifest["steps"] if s["step"] == "augment")
    train = [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()]
    synthetic = [e for e in train if e["meta"].get("synthetic")]
    assert len(synthetic) == step["report"]["added"] > 0
    assert manifest["source_kind"] == "augment" and manifest["parent_dataset"] is None  # lineage: paraphrases joined the file's examples
    assert step["report"]["rejected"]["lost_code_or_number"] == step["report"]["requested"] - step["report"]["added"]
    assert all(e["messages"][1]["content"].startswith("Rephrased: ") and e["meta"]["source_id"] for e in synthetic)
    for split in ("validation", "test"):
        assert not any(json.loads(line)["meta"].get("synthetic") for line in (folder / f"{split}.jsonl").read_text().splitlines())
    review = [json.loads(line) for line in (folder / "augment_review.jsonl").read_text().splitlines()]
    assert {r["id"] for r in review} == {e["id"] for e in synthetic}
    assert set(_Paraphraser.seen_keys) == {"Bearer test-key"}


def test_an_unreachable_endpoint_is_a_clear_error(capsys, home, tickets_file):
    result = run_cli(capsys, "data", "prepare", str(tickets_file), "--pii", "off", "--augment", "1", "--augment-url", "http://127.0.0.1:9/v1")
    assert result.code == 2 and "paraphrase endpoint" in result.err and "Traceback" not in result.err
    assert not (home / "datasets" / "tickets").exists()  # nothing half-written


@pytest.mark.parametrize(
    ("original", "paraphrase", "reason"),
    [
        ("KST-12 is down", "", "empty"),
        ("KST-12 is down", "kst-12  is DOWN", "unchanged"),
        ("KST-12 is down since 9am", "The gateway is down", "lost_code_or_number"),
        ("KST-12 is down", "Our KST-12 box has stopped working", None),
    ],
)
def test_paraphrase_filter(original, paraphrase, reason):
    assert rejection(original, paraphrase) == reason


def test_local_model_paraphrases_are_generated_and_filtered(capsys, home, tickets_file, tiny_model):
    result = run_cli(
        capsys,
        "data",
        "prepare",
        str(tickets_file),
        "--out",
        "local",
        "--pii",
        "off",
        "--augment",
        "1",
        "--augment-fraction",
        "0.25",
        "--augment-model",
        str(tiny_model),
    )
    assert result.code == 0, result.err
    manifest = json.loads((home / "datasets" / "local" / "manifest.json").read_text())
    report = next(s for s in manifest["steps"] if s["step"] == "augment")["report"]
    # A random-weight model cannot keep the product codes: every try is generated, and rejected for a stated reason.
    assert report["requested"] > 0
    assert report["added"] + sum(report["rejected"].values()) == report["requested"]
