"""Function-calling records and a tiny model trained to call a tool, shared by the tool tests."""

from __future__ import annotations

import json
from pathlib import Path

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city now",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}
CITIES = ["Paris"]


def call(call_id: str, name: str, arguments) -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments)}}


def weather_record(city: str, answered: bool = False) -> dict:
    messages = [
        {"role": "user", "content": f"What is the weather in {city}?"},
        {"role": "assistant", "content": None, "tool_calls": [call("call_1", "get_weather", {"city": city})]},
    ]
    if answered:
        messages += [{"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'}, {"role": "assistant", "content": f"It is 21 degrees in {city}."}]
    return {"tools": [WEATHER], "messages": messages}


def chat_record() -> dict:
    return {"tools": [WEATHER], "messages": [{"role": "user", "content": "Say hello"}, {"role": "assistant", "content": "Hello there!"}]}


def tool_corpus() -> list[str]:
    """Text the tiny tokenizer is trained on: the tool template's pieces, so a call is a few tokens."""
    from tunesmith.chat_template.tools import call_block, tools_system_text

    calls = [call_block("get_weather", {"city": c}) for c in CITIES]
    return [tools_system_text([WEATHER]), *calls, "Say hello", "Hello there!", *(f"What is the weather in {c}?" for c in CITIES)] * 20


def varied_records() -> list[dict]:
    """Distinct conversations (a call per city, a greeting per name), so every split gets its own."""
    cities = ["Paris", "Rome", "Oslo", "Lima", "Kyiv", "Bern", "Riga", "Baku", "Doha", "Suva", "Lome", "Male"]
    greetings = [
        {"tools": [WEATHER], "messages": [{"role": "user", "content": f"Say hello to {n}"}, {"role": "assistant", "content": f"Hello {n}!"}]}
        for n in ("Ann", "Bo", "Cy", "Di")
    ]
    return [weather_record(c, answered=i % 2 == 0) for i, c in enumerate(cities)] + greetings


def tools_home(folder: Path, records: list[dict]):
    """A workspace holding `records` as the `tools` dataset (dedup off, split 60/20/20)."""
    from tunesmith.config import PrepareSpec
    from tunesmith.data.dataset import prepare_dataset
    from tunesmith.workspace import Workspace

    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "tools.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    workspace = Workspace.from_env(folder)
    prepare_dataset(source, workspace, name="tools", seed=0, ratios=(0.6, 0.2, 0.2), options=PrepareSpec(pii="off", dedup=False, near_dedup=False))
    return workspace


def memorising_model(folder: Path, steps: int = 50) -> Path:
    """The tiny Llama trained (plain torch, all tokens) until it answers three conversations word for
    word through tunesmith's tool template: the weather question with a get_weather call, the tool's
    answer with a sentence, "Say hello" with text. A model that reliably calls, in ~15 s of CPU."""
    import torch
    from conftest import build_tiny_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.chat_template import trained_spans
    from tunesmith.data.formats import to_example

    path = build_tiny_model(folder, tool_corpus())
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)
    records = [weather_record("Paris", answered=True), chat_record()]
    texts = [trained_spans(tokenizer, to_example(r, "messages", str(i)), "all")[0] for i, r in enumerate(records)]
    ids = [torch.tensor(tokenizer(t, add_special_tokens=False)["input_ids"])[None] for t in texts]
    torch.manual_seed(0)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = sum(model(input_ids=i, labels=i).loss for i in ids)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.save_pretrained(path, safe_serialization=True)
    return path
