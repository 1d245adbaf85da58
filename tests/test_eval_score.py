"""`tunesmith eval score`: any system's outputs scored against a reference file, through the real CLI."""

from __future__ import annotations

import json

import pytest
from clihelp import run_cli
from sklearn.metrics import accuracy_score


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def refs(tmp_path):
    teams = ["billing", "tech", "billing", "account", "tech", "billing"]
    return _write_jsonl(
        tmp_path / "tickets.jsonl",
        [{"messages": [{"role": "user", "content": f"ticket {i}"}, {"role": "assistant", "content": team}]} for i, team in enumerate(teams)],
    )


def test_scores_by_id_and_writes_report(tmp_path, refs, capsys):
    predicted = {"tickets-1": "billing", "tickets-2": "tech", "tickets-3": "tech", "tickets-4": "account", "tickets-6": "billing"}
    preds = _write_jsonl(tmp_path / "preds.jsonl", [{"id": k, "prediction": v} for k, v in predicted.items()] + [{"id": "stray", "output": "x"}])
    result = run_cli(capsys, "eval", "score", str(preds), "--references", str(refs), "--out", str(tmp_path / "out"))
    assert result.code == 0, result.err
    assert "accuracy" in result.out and "confusion matrix" in result.out and "classification" in result.out
    assert "tickets-5" in result.err and "stray" in result.err  # both sides of the mismatch are named
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    truth = {"tickets-1": "billing", "tickets-2": "tech", "tickets-3": "billing", "tickets-4": "account", "tickets-6": "billing"}
    assert report["n"] == 5 and report["matched_by"] == "id"
    assert report["missing_predictions"] == ["tickets-5"] and report["unmatched_predictions"] == ["stray (line 6)"]
    assert report["metrics"]["accuracy"] == pytest.approx(accuracy_score(list(truth.values()), [predicted[k] for k in truth]))
    assert report["metrics"]["confusion_matrix"]["labels"] == ["account", "billing", "tech"]
    rows = [json.loads(line) for line in (tmp_path / "out" / "scores.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == list(truth)
    assert rows[2] == {"id": "tickets-3", "prediction": "tech", "reference": "billing", "label": "billing", "predicted_label": "tech", "correct": 0.0}


def test_named_metrics_align_by_order_and_custom(tmp_path, refs, capsys, monkeypatch):
    (tmp_path / "teammetrics.py").write_text("def short(predictions, references):\n    return sum(len(p) < 6 for p in predictions) / len(predictions)\n")
    monkeypatch.chdir(tmp_path)
    preds = _write_jsonl(tmp_path / "preds.jsonl", [{"text": t} for t in ["billing", "tech", "billing", "acct", "tech", "billing"]])
    result = run_cli(capsys, "score", str(preds), "-r", str(refs), "--metrics", "exact_match,chrf", "--custom", "teammetrics:short", "--out", "o")
    assert result.code == 0, result.err
    assert "by order" in result.err
    metrics = json.loads((tmp_path / "o" / "report.json").read_text())["metrics"]
    assert set(metrics) == {"exact_match", "chrf", "short"}
    assert metrics["exact_match"] == pytest.approx(5 / 6) and metrics["short"] == pytest.approx(3 / 6)


def test_bad_input_exits_2_with_line_and_fix(tmp_path, refs, capsys):
    preds = tmp_path / "preds.jsonl"
    preds.write_text('{"id": "tickets-1", "prediction": "billing"}\nnot json\n{"id": "tickets-2", "answer": "tech"}\n')
    result = run_cli(capsys, "eval", "score", str(preds), "--references", str(refs))
    assert result.code == 2
    assert f"{preds}:2" in result.err and f"{preds}:3" in result.err and "fix:" in result.err
    assert "Traceback" not in result.err

    few = _write_jsonl(tmp_path / "few.jsonl", [{"prediction": "billing"}])
    result = run_cli(capsys, "eval", "score", str(few), "--references", str(refs))
    assert result.code == 2 and "cannot be aligned by order" in result.err and "fix:" in result.err

    dup = _write_jsonl(tmp_path / "dup.jsonl", [{"id": "a", "prediction": "x"}, {"id": "a", "prediction": "y"}])
    result = run_cli(capsys, "eval", "score", str(dup), "--references", str(refs))
    assert result.code == 2 and "already on line 1" in result.err

    good = _write_jsonl(tmp_path / "good.jsonl", [{"prediction": "billing"}] * 6)
    result = run_cli(capsys, "eval", "score", str(good), "--references", str(refs), "--metrics", "bleu,nope")
    assert result.code == 2 and "unknown metric 'nope'" in result.err


def test_json_answers_with_schema(tmp_path, capsys):
    refs = _write_jsonl(
        tmp_path / "refs.jsonl",
        [
            {"id": f"r{i}", "prompt": f"ticket {i}", "completion": json.dumps({"team": t, "urgent": u})}
            for i, (t, u) in enumerate([("billing", True), ("tech", False), ("tech", True)])
        ],
    )
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "required": ["team", "urgent"]}))
    preds = _write_jsonl(
        tmp_path / "preds.jsonl",
        [
            {"id": "r0", "prediction": {"team": "billing", "urgent": True}},  # an object, not a string: still scored
            {"id": "r1", "prediction": '{"team": "tech"}'},
            {"id": "r2", "prediction": "tech, urgent"},
        ],
    )
    result = run_cli(capsys, "eval", "score", str(preds), "--references", str(refs), "--json-schema", str(schema), "--out", str(tmp_path / "o"))
    assert result.code == 0, result.err
    metrics = json.loads((tmp_path / "o" / "report.json").read_text())["metrics"]
    assert metrics["exact_match"] == pytest.approx(1 / 3) and metrics["valid_json"] == pytest.approx(2 / 3)
    assert metrics["schema_valid"] == pytest.approx(1 / 3) and metrics["field_accuracy.team"] == pytest.approx(2 / 3)


def test_eval_run_command_still_parses(capsys):
    result = run_cli(capsys, "eval", "--help")
    assert result.code == 0 and "RUN" in result.out.upper() and "--compare-base" in result.out
    result = run_cli(capsys, "eval", "score", "--help")
    assert result.code == 0 and "--references" in result.out and "tunesmith eval score" in result.out
