"""`tunesmith data validate`: every problem of a malformed file, at its line, never a crash."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from clihelp import run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunesmith.data.formats import CANONICAL_KEYS, read_records
from tunesmith.data.validate import validate_file
from tunesmith.errors import UserError

MALFORMED = Path(__file__).parent / "data" / "malformed"
WARNING_CODES = {
    "duplicate",
    "missing_system_message",
    "missing_user_message",
    "too_long",
    "no_trainable_tokens",
    "class_imbalance",
    "inconsistent_output_style",
}

# file -> every (line, code) the validator must report, errors and warnings together; line 0 is the whole file.
EXPECTED: dict[str, list[tuple[int, str]]] = {
    "invalid_json.jsonl": [(2, "invalid_json")],
    "not_an_object.jsonl": [(2, "data_type"), (3, "data_type"), (4, "data_type")],
    "empty_messages_list.jsonl": [(2, "missing_messages_list")],
    "messages_not_a_list.jsonl": [(2, "missing_messages_list")],
    "message_missing_key.jsonl": [(1, "message_missing_key")],
    "message_unrecognized_key.jsonl": [(2, "message_unrecognized_key")],
    "unrecognized_role.jsonl": [(1, "unrecognized_role")],
    "missing_content.jsonl": [(2, "missing_content"), (3, "missing_content")],
    "missing_assistant.jsonl": [(2, "example_missing_assistant_message")],
    "not_utf8.jsonl": [(2, "encoding")],
    "bom_and_crlf_are_fine.jsonl": [],
    "empty.jsonl": [(0, "empty_file")],
    "blank_lines_only.jsonl": [(0, "empty_file")],
    "prompt_completion_missing_field.jsonl": [(2, "missing_field"), (3, "missing_field"), (4, "missing_field")],
    "mixed_format.jsonl": [(2, "mixed_format"), (4, "mixed_format")],
    "invalid_weight.jsonl": [(1, "invalid_weight"), (2, "invalid_weight")],
    "duplicate.jsonl": [(3, "duplicate"), (5, "duplicate")],
    "missing_system_message.jsonl": [(3, "missing_system_message")],
    "missing_user_message.jsonl": [(1, "missing_user_message"), (2, "missing_system_message")],
    "all_weight_zero.jsonl": [(2, "no_trainable_tokens")],
    "class_imbalance.jsonl": [(0, "class_imbalance")],
    "json_and_prose_answers.jsonl": [(0, "inconsistent_output_style")],
    "mixed_list_styles.jsonl": [(0, "inconsistent_output_style")],
    "alpaca_missing_field.json": [(3, "missing_field"), (4, "missing_field"), (5, "missing_field")],
    "json_not_an_array.json": [(1, "data_type")],
    "json_array_broken.json": [(3, "invalid_json")],
    "json_array_with_non_objects.json": [(3, "data_type"), (4, "data_type")],
    "sharegpt_bad_turns.jsonl": [(1, "unrecognized_role"), (1, "example_missing_assistant_message"), (2, "message_missing_key")],
    "csv_missing_field.csv": [(3, "missing_field"), (4, "missing_field")],
    "csv_not_utf8.csv": [(3, "encoding")],
    "csv_extra_fields.csv": [(3, "invalid_csv")],
    "csv_empty_label.csv": [(3, "missing_field")],
    "csv_header_only.csv": [(0, "empty_file")],
    "unknown_keys.jsonl": [(1, "missing_field"), (2, "missing_field")],
    "classification_bad_label.jsonl": [(2, "missing_field"), (3, "missing_field")],
}


def found(report) -> list[tuple[int, str]]:
    return sorted((p.line, p.code) for p in report.errors + report.warnings)


def test_every_fixture_is_in_the_table():
    assert sorted(p.name for p in MALFORMED.iterdir()) == sorted(EXPECTED)


@pytest.mark.parametrize(("name", "expected"), sorted(EXPECTED.items()))
def test_malformed_file_reports_each_problem_at_its_line(name, expected):
    report = validate_file(MALFORMED / name)
    assert found(report) == sorted(expected)
    assert all(p.code in WARNING_CODES for p in report.warnings)
    assert not any(p.code in WARNING_CODES for p in report.errors)
    assert report.ok == (not report.errors)
    assert all(p.message.strip() for p in report.errors + report.warnings)


def test_parquet_rows_are_checked_and_numbered(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"prompt": ["q1", "q2", "q3", "q1"], "completion": ["a1", None, "a3", "a1"]})
    pq.write_table(table, tmp_path / "d.parquet", row_group_size=2)
    report = validate_file(tmp_path / "d.parquet")
    assert report.format == "prompt_completion" and report.examples == 3
    assert found(report) == [(2, "missing_field"), (4, "duplicate")]


def test_a_damaged_parquet_file_is_one_error_not_a_crash(tmp_path):
    (tmp_path / "d.parquet").write_bytes(b"PAR1 not really")
    report = validate_file(tmp_path / "d.parquet")
    assert [p.code for p in report.errors] == ["invalid_parquet"]


def test_named_format_turns_other_formats_into_mixed_format(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"prompt": "q", "completion": "a"}) + "\n" + json.dumps({"text": "t", "label": "l"}) + "\n")
    report = validate_file(path, fmt="classification")
    assert found(report) == [(1, "mixed_format")] and report.examples == 1


def test_mapping_renames_keys_before_checking(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n" + json.dumps({"question": "q2", "answer": ""}) + "\n")
    report = validate_file(path, mapping={"prompt": "question", "completion": "answer"})
    assert report.format == "prompt_completion" and found(report) == [(2, "missing_field")]


def test_an_unknown_mapping_target_is_a_usage_error():
    with pytest.raises(UserError, match="cannot map to"):
        validate_file(MALFORMED / "unknown_keys.jsonl", mapping={"questionn": "question"})


def test_length_checks_use_the_models_chat_template(tmp_path, tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    long_question = chat_line("question " * 40, "short answer")
    long_answer = chat_line("q", "answer " * 40)
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(chat_line("q", "a")) + "\n" + json.dumps(long_question) + "\n" + json.dumps(long_answer) + "\n")
    report = validate_file(path, tokenizer=tokenizer, max_seq_len=24)
    assert found(report) == [(2, "no_trainable_tokens"), (3, "too_long")]
    too_long = report.warnings[-1].message
    assert "of them from the final assistant answer" in too_long and "--max-seq-len" in too_long
    assert found(validate_file(path)) == []  # no tokenizer: no length checks


def chat_line(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def test_problems_kept_are_capped_but_all_counted(tmp_path, monkeypatch):
    import tunesmith.data.validate as validate

    monkeypatch.setattr(validate, "MAX_PROBLEMS_KEPT", 5)
    path = tmp_path / "d.jsonl"
    path.write_text("{bad\n" * 12)
    report = validate_file(path)
    assert len(report.errors) == 5 and report.n_errors == 12 and not report.ok and report.truncated


def test_duplicates_past_the_exact_window_are_still_caught(monkeypatch, tmp_path):
    from tunesmith.data.validate import _SeenContent

    monkeypatch.setattr(_SeenContent, "EXACT_WINDOW", 2)
    path = tmp_path / "d.jsonl"
    rows = [chat_line(f"q{i}", "a") for i in range(5)] + [chat_line("q0", "a"), chat_line("q4", "a")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = validate_file(path)
    assert [(p.line, p.message.split(";")[0]) for p in report.warnings] == [
        (6, "same content as line 1"),
        (7, "same content as an earlier line (beyond the lines remembered exactly)"),
    ]


# ---------------------------------------------------------------- fuzz: no input crashes the reader or the validator

SUFFIXES = [".jsonl", ".json", ".csv", ".parquet", ".txt"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(sorted(CANONICAL_KEYS | {"role", "content", "from", "value", "weight", "x"})), children, max_size=5)
    ),
    max_leaves=20,
)
records = st.one_of(
    json_values, st.builds(lambda r, q: {"messages": [{"role": r, "content": q}, {"role": "assistant", "content": q}]}, st.text(max_size=10), json_values)
)
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _validate_quietly(path: Path) -> None:
    list(read_records(path))
    report = validate_file(path)
    json.dumps(report.to_json())  # the --json output must always serialise


@FUZZ
@given(data=st.binary(max_size=300), suffix=st.sampled_from(SUFFIXES))
def test_random_bytes_never_crash(data, suffix):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"f{suffix}"
        path.write_bytes(data)
        _validate_quietly(path)


@FUZZ
@given(values=st.lists(records, max_size=6), as_array=st.booleans())
def test_random_json_values_never_crash(values, as_array):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ("f.json" if as_array else "f.jsonl")
        text = json.dumps(values) if as_array else "".join(json.dumps(v) + "\n" for v in values)
        path.write_text(text, encoding="utf-8")
        _validate_quietly(path)


# ---------------------------------------------------------------- the command line


def test_cli_exits_2_on_errors_and_lists_them(capsys):
    result = run_cli(capsys, "data", "validate", str(MALFORMED / "mixed_format.jsonl"))
    assert result.code == 2
    assert "mixed_format" in result.out and "2 error(s)" in result.out
    assert "Traceback" not in result.out + result.err


def test_cli_exits_0_with_only_warnings(capsys):
    result = run_cli(capsys, "data", "validate", str(MALFORMED / "duplicate.jsonl"))
    assert result.code == 0
    assert "duplicate" in result.out and "0 error(s), 2 warning(s)" in result.out


def test_cli_json_is_one_object_with_exact_keys(capsys):
    result = run_cli(capsys, "data", "validate", str(MALFORMED / "sharegpt_bad_turns.jsonl"), "--json")
    assert result.code == 2
    payload = json.loads(result.out)
    assert set(payload) == {"ok", "format", "examples", "errors", "warnings"}
    assert payload["ok"] is False and payload["format"] == "sharegpt" and payload["examples"] == 1
    assert all(set(p) == {"line", "code", "message"} for p in payload["errors"] + payload["warnings"])
    assert {"line": 2, "code": "message_missing_key"}.items() <= payload["errors"][-1].items()


def test_cli_map_takes_several_pairs_after_one_flag(capsys, tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    result = run_cli(capsys, "data", "validate", str(path), "--json", "--map", "prompt=question", "completion=answer")
    assert result.code == 0, result.out + result.err
    assert json.loads(result.out) == {"ok": True, "format": "prompt_completion", "examples": 1, "errors": [], "warnings": []}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "tsv"], "unknown format"),
        (["--map", "prompt"], "is not canonical=file_key"),
        (["--max-seq-len", "10"], "needs --model"),
    ],
)
def test_cli_usage_errors_exit_2_without_traceback(capsys, args, message):
    result = run_cli(capsys, "data", "validate", str(MALFORMED / "duplicate.jsonl"), *args)
    assert result.code == 2 and message in result.err and "Traceback" not in result.out + result.err


def test_cli_missing_file_exits_2(capsys, tmp_path):
    result = run_cli(capsys, "data", "validate", str(tmp_path / "nope.jsonl"))
    assert result.code == 2 and "no such file" in result.err


def test_cli_model_counts_tokens(capsys, tmp_path, tiny_model):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(chat_line("q", "answer " * 40)) + "\n")
    result = run_cli(capsys, "data", "validate", str(path), "--model", str(tiny_model), "--max-seq-len", "20", "--json")
    assert result.code == 0, result.err
    assert [w["code"] for w in json.loads(result.out)["warnings"]] == ["too_long"]
