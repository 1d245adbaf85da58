"""Every input format and file type becomes the same canonical Example."""

from __future__ import annotations

import json
import typing

import pytest

from tunesmith.data.formats import FormatName, apply_mapping, load_examples, parse_mapping, read_records
from tunesmith.errors import ProblemList, UserError

QA = [("user", "q"), ("assistant", "a")]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def turns(example):
    return [(m.role, m.content) for m in example.messages]


@pytest.mark.parametrize(
    ("record", "fmt", "expected"),
    [
        ({"instruction": "q", "output": "a"}, "alpaca", QA),
        ({"instruction": "q", "input": "", "output": "a"}, "alpaca", QA),
        ({"instruction": "Translate", "input": "chat", "output": "cat"}, "alpaca", [("user", "Translate\n\nchat"), ("assistant", "cat")]),
        (
            {"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
            "sharegpt",
            [("system", "s"), *QA],
        ),
        ({"text": "q", "label": "a"}, "classification", QA),
        ({"prompt": "q", "completion": "a"}, "prompt_completion", QA),
        ({"input_text": "q", "output_text": "a"}, "input_output", QA),
    ],
)
def test_each_format_is_detected_and_normalised(tmp_path, record, fmt, expected):
    examples, detected = load_examples(write_jsonl(tmp_path / "d.jsonl", [record]))
    assert detected == fmt and turns(examples[0]) == expected


def test_every_format_name_is_in_the_literal():
    assert set(typing.get_args(FormatName)) == {
        "messages",
        "prompt_completion",
        "input_output",
        "alpaca",
        "sharegpt",
        "classification",
        "preference",
        "prompt_chosen_rejected",
    }


def test_classification_keeps_the_label_and_numbers_become_text(tmp_path):
    examples, _ = load_examples(write_jsonl(tmp_path / "d.jsonl", [{"text": "hello", "label": 3}]))
    assert examples[0].label == "3" and examples[0].reference == "3"


def test_chat_weights_survive(tmp_path):
    record = {
        "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "x", "weight": 0},
            {"role": "user", "content": "q2"},
            {"role": "assistant", "content": "a", "weight": 1},
        ]
    }
    examples, _ = load_examples(write_jsonl(tmp_path / "d.jsonl", [record]))
    assert [m.weight for m in examples[0].messages] == [None, 0, None, 1]


def test_sharegpt_unknown_speaker_is_a_problem_with_its_line(tmp_path):
    good = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    bad = {"conversations": [{"from": "human", "value": "q"}, {"from": "bot", "value": "a"}]}
    with pytest.raises(ProblemList) as caught:
        load_examples(write_jsonl(tmp_path / "d.jsonl", [good, bad]))
    assert ":2: conversations[1].from" in caught.value.render()


def test_mapping_renames_the_files_keys(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": "a", "extra": 1}])
    examples, fmt = load_examples(path, mapping={"prompt": "question", "completion": "answer"})
    assert fmt == "prompt_completion" and turns(examples[0]) == QA


def test_parse_mapping_accepts_spaces_commas_and_repeats():
    assert parse_mapping(["prompt=question,completion=answer", "label=y"]) == {"prompt": "question", "completion": "answer", "label": "y"}
    with pytest.raises(UserError):
        parse_mapping(["prompt"])
    with pytest.raises(UserError, match="cannot map to"):
        parse_mapping(["promt=question"])
    assert apply_mapping([1], {"prompt": "q"}) == [1]


def test_csv_with_a_bom_and_a_chat_column(tmp_path):
    path = tmp_path / "d.csv"
    chat = json.dumps([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]).replace('"', '""')
    path.write_bytes(b"\xef\xbb\xbfmessages\r\n" + f'"{chat}"\r\n'.encode())
    examples, fmt = load_examples(path)
    assert fmt == "messages" and turns(examples[0]) == QA


def test_csv_multiline_field_keeps_the_row_start_line(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('prompt,completion\n"two\nlines",a\nq,a2\n')
    assert [line for line, _ in read_records(path)] == [2, 4]


def test_json_array_records_carry_their_line_numbers(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n {"prompt": "q", "completion": "a"},\n\n {"prompt": "q2",\n  "completion": "a2"}\n]')
    assert [line for line, _ in read_records(path)] == [2, 4]


def test_parquet_is_streamed_in_batches(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 2500  # more than one read batch
    pq.write_table(pa.table({"text": [f"t{i}" for i in range(n)], "label": ["x", "y"] * (n // 2)}), tmp_path / "d.parquet", row_group_size=1000)
    examples, fmt = load_examples(tmp_path / "d.parquet")
    assert fmt == "classification" and len(examples) == n and examples[-1].messages[0].content == f"t{n - 1}"


def test_unknown_format_name_is_a_usage_error(tmp_path):
    with pytest.raises(UserError, match="unknown format"):
        load_examples(write_jsonl(tmp_path / "d.jsonl", [{"prompt": "q", "completion": "a"}]), "tsv")  # type: ignore[arg-type]


def _commands_taking_map():
    """Every CLI command with a --map option, found by walking the command tree."""
    import typer.main

    from tunesmith.cli import app

    found, stack = [], [((), typer.main.get_command(app))]
    while stack:
        path, command = stack.pop()
        for name, sub in getattr(command, "commands", {}).items():
            stack.append(((*path, name), sub))
        if any("--map" in getattr(p, "opts", ()) for p in command.params):
            found.append(path)
    return sorted(found)


MAP_FORMS = {
    "space-separated after one --map": ["--map", "prompt=question", "completion=answer"],
    "repeated --map": ["--map", "prompt=question", "--map", "completion=answer"],
    "comma-separated": ["--map", "prompt=question,completion=answer"],
    "--map=": ["--map=prompt=question", "completion=answer"],
}


@pytest.mark.parametrize("form", sorted(MAP_FORMS))
def test_every_command_taking_map_parses_it_the_same_way(capsys, home, tmp_path, form):
    from clihelp import run_cli

    commands = _commands_taking_map()
    assert commands == [("data", "prepare"), ("data", "validate")]
    source = write_jsonl(tmp_path / "qa.jsonl", [{"question": f"question {i} about {i * 7} things", "answer": f"answer {i}"} for i in range(30)])
    for command in commands:
        extra = ["--pii", "off", "--out", f"qa-{command[1]}"] if command == ("data", "prepare") else []
        # the pairs both after the file and before it
        for args in ([str(source), *MAP_FORMS[form], *extra], [*MAP_FORMS[form], *extra, str(source)]):
            result = run_cli(capsys, *command, *args)
            assert result.code == 0, (command, args, result.out + result.err)
            assert "prompt_completion" in result.out + result.err
