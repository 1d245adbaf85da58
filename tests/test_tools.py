"""Function calling: OpenAI's tools format read and checked line by line, kept whole through prepare,
rendered once (natively or with tunesmith's tool template) with loss on the assistant's calls and text
only, read back by one parser, and scored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from toolfixtures import WEATHER, call, chat_record, weather_record

from tunesmith.chat_template import IGNORE, encode, render_prompt, trained_spans
from tunesmith.chat_template.tools import TOOL_CALL_OPEN, call_block, parse_calls, supports_tools
from tunesmith.data.formats import load_examples, to_example
from tunesmith.data.validate import validate_file

EMAIL = {
    "type": "function",
    "function": {
        "name": "send_email",
        "parameters": {"type": "object", "properties": {"to": {"type": "string"}, "body": {"type": "string"}}, "required": ["to", "body"]},
    },
}


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


def asked(messages: list[dict], tools: list[dict] | None = None, **extra) -> dict:
    return {**({"tools": tools} if tools is not None else {}), "messages": [{"role": "user", "content": "x"}, *messages], **extra}


# ---------------------------------------------------------------- reading and validation


def test_each_tool_problem_is_named_with_its_code_and_line(tmp_path):
    good = weather_record("Paris", answered=True)
    records = [
        good,  # 1
        asked([{"role": "assistant", "tool_calls": [call("c1", "get_weather", "{city: Paris}")]}], [WEATHER]),  # 2
        asked([{"role": "assistant", "tool_calls": [call("c1", "get_weather", {"unit": "kelvin", "city": "X"})]}], [WEATHER]),  # 3
        asked([{"role": "tool", "tool_call_id": "nope", "content": "1"}, {"role": "assistant", "content": "y"}], [WEATHER]),  # 4
        asked([{"role": "assistant", "tool_calls": [call("c1", "send_email", {"to": "a", "body": "b"})]}], [WEATHER]),  # 5
        asked([{"role": "assistant", "tool_calls": [call("c1", "get_weather", {"city": "A"}), call("c1", "get_weather", {"city": "B"})]}], [WEATHER]),  # 6
        asked([{"role": "assistant", "tool_calls": [call("c1", "get_weather", {"city": "A"})]}]),  # 7: no tools declared
        asked(
            [{"role": "assistant", "tool_calls": [call("c1", "get_weather", {"city": "A"}), call("c2", "get_weather", {"city": "B"})]}],
            [WEATHER],
            parallel_tool_calls=False,
        ),  # 8
        asked([{"role": "assistant", "content": "y"}], [{"type": "function", "function": {"name": "f", "parameters": {"type": "nonsense"}}}]),  # 9
    ]
    report = validate_file(write_jsonl(tmp_path / "calls.jsonl", records))
    found = {(p.line, p.code) for p in report.errors}
    assert found == {
        (2, "tool_arguments_not_json"),
        (3, "tool_arguments_schema"),
        (4, "tool_result_unmatched"),
        (5, "undeclared_tool"),
        (6, "duplicate_tool_call_id"),
        (7, "undeclared_tool"),
        (8, "parallel_tool_calls"),
        (9, "invalid_tools"),
    }
    messages = {p.line: p.message for p in report.errors}
    assert "messages[1].tool_calls[0].function.arguments" in messages[2]
    assert "arguments.unit" in messages[3] and "'kelvin' is not one of" in messages[3]
    assert "'nope'" in messages[4] and "'send_email'" in messages[5] and "declared: get_weather" in messages[5]
    assert report.examples == 1  # only the good line


def test_prepare_refuses_the_same_lines_with_the_same_codes(tmp_path):
    from tunesmith.data.formats import ExampleReader

    bad = asked([{"role": "assistant", "tool_calls": [call("c1", "get_weather", "[1, 2")]}], [WEATHER])
    reader = ExampleReader(write_jsonl(tmp_path / "f.jsonl", [weather_record("Rome"), bad]), skip_invalid=True)
    assert [e.id for e in reader] == ["f-1"]
    assert [(p["line"], p["code"]) for p in reader.problems.listed] == [(2, "tool_arguments_not_json")]


def test_legacy_functions_become_the_same_example_as_tools():
    legacy = {
        "functions": [WEATHER["function"]],
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "function_call": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"role": "function", "name": "get_weather", "content": '{"temp": 21}'},
            {"role": "assistant", "content": "21 degrees."},
        ],
    }
    current = {
        "tools": [WEATHER],
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [call("call_1", "get_weather", {"city": "Paris"})]},
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
            {"role": "assistant", "content": "21 degrees."},
        ],
    }
    a, b = to_example(legacy, "messages", "a"), to_example(current, "messages", "a")
    assert a == b and a.content_key() == b.content_key()
    assert a.messages[1].tool_calls[0].function.name == "get_weather" and a.messages[2].role == "tool"
    orphan = {**legacy, "messages": [legacy["messages"][0], legacy["messages"][2], legacy["messages"][3]]}
    with pytest.raises(ValueError, match="which no earlier assistant turn called"):
        to_example(orphan, "messages", "b")


def test_examples_without_tools_are_written_and_hashed_as_before():
    example = to_example({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}, "messages", "a")
    assert example.model_dump_json() == (
        '{"id":"a","messages":[{"role":"user","content":"hi","weight":null},{"role":"assistant","content":"yo","weight":null}],'
        '"label":null,"weight":1.0,"meta":{}}'
    )
    assert example.content_key().startswith("14fe85ba")  # the digest main computes for this conversation


def test_calls_survive_prepare_dedup_and_pii_redaction(tmp_path, home):
    from tunesmith.config import PrepareSpec
    from tunesmith.data.dataset import prepare_dataset
    from tunesmith.workspace import Workspace

    records = []
    for city in ("Paris", "Rome", "Oslo", "Lima", "Kyiv", "Bern", "Riga", "Baku", "Doha", "Suva"):
        records.append(
            {
                "tools": [WEATHER, EMAIL],
                "messages": [
                    {"role": "user", "content": f"Mail the weather in {city} to me"},
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [call("c1", "send_email", {"to": "jane.doe@example.org", "body": f"Sunny in {city}"})],
                    },
                ],
            }
        )
    # Same words, other arguments: not a duplicate; the same call twice: one.
    records.append(
        {**records[0], "messages": [records[0]["messages"][0], {**records[0]["messages"][1], "tool_calls": [call("c1", "get_weather", {"city": "Paris"})]}]}
    )
    records.append(records[1])
    source = write_jsonl(tmp_path / "mail.jsonl", records)
    dataset = prepare_dataset(
        source, Workspace.from_env(home), name="mail", seed=0, ratios=(0.8, 0.1, 0.1), options=PrepareSpec(pii="redact", pii_ner=False, near_dedup=False)
    )
    examples = [e for split in ("train", "validation", "test") for e in dataset.splits[split]]
    assert len(examples) == 11
    for example in examples:
        calls = example.messages[1].tool_calls
        arguments = json.loads(calls[0].function.arguments)  # still JSON after redaction
        if calls[0].function.name == "send_email":
            assert arguments["to"] == "<EMAIL>" and arguments["body"].startswith("Sunny in ")
        assert [t.function.name for t in example.tools] == ["get_weather", "send_email"]


# ---------------------------------------------------------------- rendering and masking


def trained_text(tokenizer, example) -> str:
    encoded = encode(tokenizer, example, 2048)
    return tokenizer.decode([i for i, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE])


def test_tool_template_is_used_and_only_calls_and_answers_carry_loss(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    assert not supports_tools(tokenizer)  # plain ChatML drops tools: tunesmith's tool template it is
    example = to_example(weather_record("Paris", answered=True), "messages", "w")
    text, spans = trained_spans(tokenizer, example, "assistant")
    assert text.startswith("<|im_start|>system\n# Tools") and json.dumps(WEATHER) in text
    assert '<|im_start|>user\n<tool_response>\n{"temp": 21}\n</tool_response><|im_end|>' in text
    assert [text[a:b] for a, b in spans] == [call_block("get_weather", {"city": "Paris"}) + "<|im_end|>", "It is 21 degrees in Paris.<|im_end|>"]
    trained = trained_text(tokenizer, example)
    assert trained == '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>It is 21 degrees in Paris.<|im_end|>'
    assert "temp" not in trained and 'get_weather", "description' not in trained
    # Evaluation's and serving's prompt is training's prefix, with the tools in it.
    prompt = render_prompt(tokenizer, example)
    assert text.startswith(prompt) and prompt.endswith("<|im_start|>assistant\n") and "<tools>" in prompt


NATIVE = (
    "{% if tools %}<|im_start|>system\nTOOLS:{% for t in tools %}{{ t.function.name }}={{ t.function.description }};{% endfor %}<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.tool_calls %}{% for c in m.tool_calls %}CALL {{ c.function.name }} {{ c.function.arguments | tojson }}"
    "{% endfor %}{% else %}{{ m.content }}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_a_template_that_renders_tools_is_used_natively(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokenizer.chat_template = NATIVE
    assert supports_tools(tokenizer)
    example = to_example(weather_record("Paris", answered=True), "messages", "w")
    text, spans = trained_spans(tokenizer, example, "assistant")
    assert text.startswith("<|im_start|>system\nTOOLS:get_weather=The weather in a city now;<|im_end|>") and TOOL_CALL_OPEN not in text
    assert [text[a:b] for a, b in spans] == ['CALL get_weather {"city": "Paris"}<|im_end|>', "It is 21 degrees in Paris.<|im_end|>"]
    assert '<|im_start|>tool\n{"temp": 21}<|im_end|>' in text  # the tool's answer, rendered but not trained


@pytest.mark.slow
def test_the_embedded_smollm2_template_drops_tools_so_the_tool_template_is_used():
    from transformers import AutoTokenizer

    from tunesmith.config import EMBEDDED_MODEL
    from tunesmith.models.loading import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(EMBEDDED_MODEL))
    assert not supports_tools(tokenizer)
    text, spans = trained_spans(tokenizer, to_example(weather_record("Paris"), "messages", "w"), "assistant")
    assert "You are a helpful AI assistant named SmolLM" not in text and "<tools>" in text
    assert [text[a:b] for a, b in spans] == [call_block("get_weather", {"city": "Paris"}) + "<|im_end|>"]


def test_parser_reads_back_what_the_renderer_writes():
    blocks = call_block("get_weather", '{"city": "Paris"}') + "\n" + call_block("send_email", {"to": "a", "body": "é"})
    content, calls = parse_calls("Checking.\n" + blocks)
    assert content == "Checking."
    assert [(c.name, json.loads(c.arguments), c.valid_json) for c in calls] == [
        ("get_weather", {"city": "Paris"}, True),
        ("send_email", {"to": "a", "body": "é"}, True),
    ]
    assert parse_calls("Just text, no call.") == ("Just text, no call.", [])
    # cut off by the token limit, written with arguments as text, or as a bare object (Llama 3.1's way, only with tools offered)
    assert parse_calls('<tool_call>\n{"name": "f", "arguments": "{\\"a\\": 1}"}')[1][0].arguments == '{"a": 1}'
    assert parse_calls('{"name": "get_weather", "parameters": {"city": "Rome"}}', ["get_weather"])[1][0].name == "get_weather"
    assert parse_calls('{"name": "Bob", "arguments": {}}', ["get_weather"])[1] == []
    broken = parse_calls("<tool_call>not json</tool_call>")[1]
    assert broken[0].name == "" and not broken[0].valid_json


# ---------------------------------------------------------------- metrics


def test_tool_metrics_on_hand_made_answers():
    from tunesmith.eval.metrics import compute_metrics, detect_task, example_scores

    paris = call_block("get_weather", {"city": "Paris"})
    refs = [paris, paris, paris, paris, "Hello there!", "Hello there!"]
    preds = [
        '<tool_call>{"arguments": {"city": "Paris"}, "name": "get_weather"}</tool_call>',  # the same call, written otherwise: exact
        call_block("get_weather", {"city": 3}),  # right tool, arguments the schema refuses
        call_block("send_email", {"to": "x", "body": "y"}),  # wrong tool
        "It is sunny in Paris.",  # answered in text when it should have called
        "Hello there!",
        paris,  # called when it should have answered
    ]
    assert detect_task(refs) == "tools"
    tools = [[WEATHER, EMAIL]] * len(refs)
    metrics = compute_metrics(preds, refs, tools=tools)
    assert metrics["tool_name_accuracy"] == pytest.approx(2 / 4)
    assert metrics["tool_arguments_exact_match"] == pytest.approx(1 / 4)
    assert metrics["tool_missed_call"] == pytest.approx(1 / 4)
    assert metrics["tool_unwanted_call"] == pytest.approx(1 / 2)
    # valid: rows 1, 3 and 6 of the 4 answers that called
    assert metrics["tool_arguments_schema_valid"] == pytest.approx(3 / 4)
    rows = example_scores(preds, refs, ["tool_calls"], tools=tools)
    assert rows[3] == {"tool_missed_call": 1.0, "tool_name_accuracy": 0.0, "tool_arguments_exact_match": 0.0}
    assert rows[5] == {"tool_unwanted_call": 1.0, "tool_arguments_schema_valid": 1.0}
    # Without the tools (a predictions file scored on its own) schema validity is left out, the rest stays.
    assert "tool_arguments_schema_valid" not in compute_metrics(preds, refs) and compute_metrics(preds, refs)["tool_name_accuracy"] == 0.5


def test_headline_and_direction_of_tool_metrics():
    from tunesmith.eval.metrics import definition, headline_metric

    assert headline_metric("tools", {"tool_arguments_exact_match": 0.5, "exact_match": 0.1}) == "tool_arguments_exact_match"
    assert definition("tool_missed_call").direction == "lower" and definition("tool_name_accuracy").direction == "higher"


def test_chat_record_is_not_a_tool_task_reference():
    example = to_example(chat_record(), "messages", "c")
    from tunesmith.eval.toolcalls import reference_text

    assert reference_text(example) == "Hello there!"
    assert reference_text(to_example(weather_record("Rome"), "messages", "w")) == call_block("get_weather", {"city": "Rome"})


def test_loaded_file_keeps_tools_for_evaluation(tmp_path):
    examples, fmt = load_examples(write_jsonl(tmp_path / "w.jsonl", [weather_record("Paris"), chat_record()]))
    assert fmt == "messages" and all(e.tools_json() == [WEATHER] for e in examples)
    assert examples[0].reference_calls[0].function.arguments == '{"city": "Paris"}' and examples[1].reference_calls is None


def test_streamed_answer_holds_back_call_text_and_sends_calls_as_openai_does():
    from tunesmith.serve.tools import CallStream, Offer

    offered = Offer(tools=[WEATHER])
    text = "Let me check. " + call_block("get_weather", {"city": "Paris"})
    stream = CallStream(offered)
    deltas = [d for i in range(0, len(text), 3) for d in stream.push(text[i : i + 3])]
    assert "".join(d["content"] for d in deltas) == "Let me check. "  # nothing of the call leaked as content
    last, reason = stream.finish("stop")
    assert reason == "tool_calls"
    head, body = last
    assert head["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": ""} and head["tool_calls"][0]["id"].startswith("call_")
    assert body == {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Paris"}'}}]}
    # A '<' that opens no call is sent once it is known not to; text stays text.
    plain = CallStream(offered)
    sent = [d for piece in ("1 <", " 2", " done") for d in plain.push(piece)]
    assert "".join(d["content"] for d in sent) + "".join(d["content"] for d in plain.finish("stop")[0]) == "1 < 2 done"
    assert plain.finish("length")[1] == "length"
