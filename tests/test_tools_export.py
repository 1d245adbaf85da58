"""Exports of a model whose own chat template drops tools (SmolLM2's, the tiny model's ChatML) carry a
template that renders tools, calls and tool answers as tunesmith's tool template does, so vLLM,
transformers and llama.cpp given `tools=[...]` see what training saw (docs/tools.md, "Exports")."""

from __future__ import annotations

import json

import pytest
from toolfixtures import WEATHER, call, tools_home, varied_records

from tunesmith.chat_template import render_messages
from tunesmith.chat_template.tools import exported_template, supports_tools

SEND = {
    "type": "function",
    "function": {"name": "send_note", "description": "Send a note", "parameters": {"type": "object", "properties": {"to": {"type": "string"}}}},
}


def objects(messages: list[dict]) -> list[dict]:
    """The messages as vLLM hands them to a template: calls' arguments parsed into objects."""
    return [
        {**m, "tool_calls": [{**c, "function": {**c["function"], "arguments": json.loads(c["function"]["arguments"])}} for c in m["tool_calls"]]}
        if m.get("tool_calls")
        else m
        for m in messages
    ]


ASK = {"role": "user", "content": "Weather in Paris and Rome? Tell Ann."}
PARALLEL = {
    "role": "assistant",
    "content": None,
    "tool_calls": [call("call_1", "get_weather", {"city": "Paris"}), call("call_2", "get_weather", {"city": "Rome"})],
}
ANSWERS = [{"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'}, {"role": "tool", "tool_call_id": "call_2", "content": "sunny, é"}]
WITH_TEXT = {"role": "assistant", "content": "Sending it now.", "tool_calls": [call("call_3", "send_note", {"to": "Ann", "text": "21 °C"})]}
SYSTEM = {"role": "system", "content": "You are brief."}
TOOL_CONVERSATIONS = {
    "single call asked": [{"role": "user", "content": "Weather in Paris?"}],
    "single call made": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call("c", "get_weather", {"city": "Paris"})]},
    ],
    "parallel calls and answers": [ASK, PARALLEL, *ANSWERS],
    "system prompt, calls, answers, text and a call": [SYSTEM, ASK, PARALLEL, *ANSWERS, WITH_TEXT, {"role": "tool", "tool_call_id": "call_3", "content": "ok"}],
    "system prompt, text answer, new question": [SYSTEM, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, ASK],
    "empty system prompt": [{"role": "system", "content": ""}, ASK],
}
PLAIN = {
    "one question": [{"role": "user", "content": "Hi"}],
    "system and turns": [SYSTEM, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "More\nlines"}],
}


def exported_tokenizer(model, folder):
    """The tokenizer as an export writes it (export.merged.save_tokenizer), loaded back as any program would."""
    from transformers import AutoTokenizer

    from tunesmith.export.merged import save_tokenizer

    assert save_tokenizer(AutoTokenizer.from_pretrained(model), folder)
    return AutoTokenizer.from_pretrained(folder)


def dropped(original, messages, tools, ours) -> bool:
    """The model's own template does not render what the exported one does (it drops the tools, or fails on a call without content)."""
    try:
        return original.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False) != ours
    except Exception:
        return True


def check_renders_as_tunesmith(model, folder):
    from transformers import AutoTokenizer

    original = AutoTokenizer.from_pretrained(model)
    exported = exported_tokenizer(model, folder)
    assert not supports_tools(original) and supports_tools(exported)
    for name, messages in TOOL_CONVERSATIONS.items():
        for tools in ([WEATHER, SEND], [WEATHER]):
            ours = render_messages(original, messages, tools)
            assert "<tools>" in ours
            theirs = exported.apply_chat_template(objects(messages), tools=tools, add_generation_prompt=True, tokenize=False)
            assert theirs == ours, name
            # arguments as OpenAI's JSON text are written as given: alike when the text is what json.dumps writes
            as_text = [
                {
                    **m,
                    "tool_calls": [
                        {**c, "function": {**c["function"], "arguments": json.dumps(c["function"]["arguments"], ensure_ascii=False)}} for c in m["tool_calls"]
                    ],
                }
                if m.get("tool_calls")
                else m
                for m in objects(messages)
            ]
            assert exported.apply_chat_template(as_text, tools=tools, add_generation_prompt=True, tokenize=False) == ours, name
            assert dropped(original, objects(messages), tools, ours)
    for name, messages in PLAIN.items():
        for generation in (True, False):
            kwargs = {"add_generation_prompt": generation, "tokenize": False}
            assert exported.apply_chat_template(messages, **kwargs) == original.apply_chat_template(messages, **kwargs), name
            assert exported.apply_chat_template(messages, **kwargs) == render_messages(original, messages) or not generation
    return original, exported


def test_exported_template_renders_tools_as_tunesmith_and_plain_chats_as_before(tiny_model, tmp_path):
    check_renders_as_tunesmith(tiny_model, tmp_path / "export")


def test_llama_cpp_jinja_formatter_renders_the_exported_template_alike(tiny_model, tmp_path):
    """llama-cpp-python's chat formatter (what a GGUF's tokenizer.chat_template is rendered with) gives the same text."""
    pytest.importorskip("llama_cpp")
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from tunesmith.export.verify import runtime_messages

    original, exported = check_renders_as_tunesmith(tiny_model, tmp_path / "export")
    formatter = Jinja2ChatFormatter(template=exported.chat_template, eos_token=exported.eos_token, bos_token=exported.bos_token)
    for messages in TOOL_CONVERSATIONS.values():
        assert formatter(messages=runtime_messages(messages), tools=[WEATHER, SEND]).prompt == render_messages(original, messages, [WEATHER, SEND])
    for messages in PLAIN.values():
        assert formatter(messages=messages).prompt == render_messages(original, messages)


def test_a_template_that_renders_tools_is_exported_as_it_is(tiny_model):
    from test_tools import NATIVE
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokenizer.chat_template = NATIVE
    assert exported_template(tokenizer) is None


@pytest.mark.slow
def test_the_embedded_smollm2_exported_template_renders_tools_as_tunesmith(tmp_path):
    from tunesmith.config import EMBEDDED_MODEL
    from tunesmith.models.loading import resolve_model_path

    check_renders_as_tunesmith(resolve_model_path(EMBEDDED_MODEL), tmp_path / "export")


@pytest.fixture(scope="module")
def tool_run(tiny_model, tmp_path_factory):
    from tunesmith.config import RunSpec
    from tunesmith.train.recipe import train

    ws = tools_home(tmp_path_factory.mktemp("toolexport") / "home", varied_records())
    spec = {"model": {"name": str(tiny_model)}, "data": {"dataset": "tools"}, "train": {"max_steps": 2, "batch_size": 4}, "eval": {"max_new_tokens": 8}}
    return ws, train(RunSpec.model_validate(spec), ws).info.run_id


@pytest.mark.parametrize(("to", "runtime"), [("merged", None), ("adapter", "peft")])
def test_a_tool_run_exports_a_template_that_verifies_on_its_tool_prompts(tool_run, tmp_path, to, runtime):
    """export -> verification renders the held-out prompts with their tools on both sides (prompt ids
    identical, tool prompts included); the folder's template given tools renders as tunesmith."""
    from transformers import AutoTokenizer

    from tunesmith.export.base import asks_tools
    from tunesmith.export.pipeline import export_run
    from tunesmith.export.source import load_source

    ws, run = tool_run
    result = export_run(run, ws, to, out=tmp_path / to, runtime=runtime)
    verification = result.verification
    _, conversations, _ = load_source(ws, run).conversations(32)
    assert sum(asks_tools(c) for c in conversations) >= 2 and verification["examples"] == len(conversations)
    assert verification["passed"] and verification["prompt_ids_identical"] == verification["examples"]
    assert result.record["details"]["tool_template"] is True and any("tool template" in n for n in result.record["notes"])
    folder = tmp_path / to / ("base" if to == "adapter" else "")
    exported = AutoTokenizer.from_pretrained(folder)
    run_tokenizer = AutoTokenizer.from_pretrained(ws.run_dir(run) / "adapter")
    messages = TOOL_CONVERSATIONS["system prompt, calls, answers, text and a call"]
    assert exported.apply_chat_template(objects(messages), tools=[WEATHER, SEND], add_generation_prompt=True, tokenize=False) == render_messages(
        run_tokenizer, messages, [WEATHER, SEND]
    )


@pytest.mark.slow
def test_a_gguf_carries_the_template_and_llama_cpp_renders_tool_prompts_as_training(tmp_path):
    """A 2-layer Llama with SmolLM2's tokenizer (llama.cpp knows its pre-tokenizer), its folder written as
    an export writes it, converted by llama.cpp's converter: the GGUF's tokenizer.chat_template is the
    exported one, and llama.cpp's chat path tokenises tool prompts to the ids tunesmith trains on."""
    pytest.importorskip("llama_cpp")
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tunesmith.config import EMBEDDED_MODEL
    from tunesmith.export.base import ToolConversation
    from tunesmith.export.gguf import convert_to_gguf, gguf_metadata, llamacpp_chat_answers
    from tunesmith.export.merged import save_tokenizer
    from tunesmith.models.loading import resolve_model_path

    pytest.importorskip("gguf")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(EMBEDDED_MODEL))
    folder = tmp_path / "merged"
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    assert save_tokenizer(AutoTokenizer.from_pretrained(resolve_model_path(EMBEDDED_MODEL)), folder)
    gguf = convert_to_gguf(folder, tmp_path / "tiny.gguf", "f16")
    assert gguf_metadata(gguf)["tokenizer.chat_template"] == AutoTokenizer.from_pretrained(folder).chat_template
    conversations = [ToolConversation(m, [WEATHER, SEND]) for m in TOOL_CONVERSATIONS.values()] + list(PLAIN.values())
    answers = llamacpp_chat_answers(gguf, conversations, max_new_tokens=1)
    for conversation, answer in zip(conversations, answers, strict=True):
        text = render_messages(tokenizer, conversation, getattr(conversation, "tools", None))
        assert answer.prompt_ids == tokenizer(text, add_special_tokens=False)["input_ids"]


def test_a_target_whose_template_cannot_render_tools_leaves_tool_prompts_out_and_says_so(tool_run, tmp_path):
    """As for Ollama (its TEMPLATE renders role and content only): held-out prompts with tools are left
    out and counted under not_checked; when every prompt offers tools (this run's test split), nothing
    is left to compare and the verification fails saying why, rather than passing on no examples."""
    from dataclasses import replace

    from tunesmith.export.base import ExportOptions, Written, asks_tools
    from tunesmith.export.pipeline import export_run
    from tunesmith.export.source import load_source
    from tunesmith.export.targets import target_for
    from tunesmith.export.verify import verify_answers

    ws, run = tool_run
    result = export_run(run, ws, "merged", out=tmp_path / "merged", verify=False)
    source = load_source(ws, run)
    _, conversations, _ = source.conversations(32)
    assert all(asks_tools(c) for c in conversations)
    target = replace(target_for("merged"), renders_tools=False)
    written = Written(runtime="transformers", usage="", details=result.record["details"])
    found = verify_answers(source, target, tmp_path / "merged", written, ExportOptions(to="merged", out=tmp_path / "merged"))
    assert not found.passed and found.examples == 0
    assert f"all {len(conversations)} held-out prompts offer tools" in found.failures[0]
    assert f"{len(conversations)} held-out prompts with tools" in " ".join(found.not_checked)
