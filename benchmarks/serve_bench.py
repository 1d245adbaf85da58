"""Serving throughput: 1, 8 and 32 concurrent `openai` clients against `tunesmith serve` (each engine
installed) and, as the baseline in the same run, one-by-one `model.generate` on the same prompts,
with the embedded SmolLM2-135M-Instruct; and the server's memory with 1 and 4 LoRA adapters.

    python benchmarks/serve_bench.py --clients 1,8,32 --requests 32 --max-tokens 32

Every request is greedy with a fixed max_tokens; throughput counts generated tokens (the usage the
server reports). Prints a markdown table and writes benchmarks/results/serve_bench.json."""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from tunesmith.chat_template import end_of_turn_ids, render_messages
from tunesmith.config import EMBEDDED_MODEL, ModelSpec
from tunesmith.demo.tickets import generate as demo_tickets
from tunesmith.models.loading import EMBEDDED, load_model, resolve_model_path


def prompts(n: int) -> list[list[dict]]:
    return [r["messages"][:-1] for r in demo_tickets(n, seed=5)]


@torch.no_grad()
def one_by_one(conversations: list[list[dict]], max_tokens: int) -> dict:
    model, tokenizer, _ = load_model(ModelSpec())
    eot = end_of_turn_ids(tokenizer)
    warm = tokenizer(render_messages(tokenizer, conversations[0]), return_tensors="pt", add_special_tokens=False)
    model.generate(**warm, max_new_tokens=2, do_sample=False, pad_token_id=eot[0])
    tokens, latencies = 0, []
    started = time.perf_counter()
    for messages in conversations:
        t0 = time.perf_counter()
        encoded = tokenizer(render_messages(tokenizer, messages), return_tensors="pt", add_special_tokens=False)
        out = model.generate(
            **encoded, max_new_tokens=max_tokens, do_sample=False, eos_token_id=eot, pad_token_id=eot[0], temperature=None, top_p=None, top_k=None
        )
        tokens += out.shape[1] - encoded["input_ids"].shape[1]
        latencies.append(time.perf_counter() - t0)
    wall = time.perf_counter() - started
    return {"tokens": tokens, "wall_s": wall, "tok_s": tokens / wall, "p50_s": statistics.median(latencies), "p95_s": _p95(latencies), "ttft_s": None}


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def _serve(app) -> tuple[str, object, threading.Thread]:
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}/v1", server, thread


def against_server(model_arg: str, engine: str, conversations: list[list[dict]], clients: int, max_tokens: int, url: str) -> dict:
    from openai import OpenAI

    client = OpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)
    name = model_arg if engine != "llamacpp" else Path(model_arg).name

    def one(messages: list[dict]) -> tuple[int, float, float]:
        t0 = time.perf_counter()
        first, tokens = None, 0
        stream = client.chat.completions.create(
            model=name, messages=messages, temperature=0, max_tokens=max_tokens, stream=True, stream_options={"include_usage": True}
        )
        for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - t0
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        return tokens, time.perf_counter() - t0, first if first is not None else time.perf_counter() - t0

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, conversations))
    wall = time.perf_counter() - started
    tokens = sum(r[0] for r in results)
    latencies = [r[1] for r in results]
    return {
        "tokens": tokens,
        "wall_s": wall,
        "tok_s": tokens / wall,
        "p50_s": statistics.median(latencies),
        "p95_s": _p95(latencies),
        "ttft_s": statistics.median(r[2] for r in results),
    }


def make_adapters(base: str, k: int, folder: Path) -> list[str]:
    """k random rank-16 LoRA adapters (all-linear) on the base, as PEFT folders with the tokenizer beside them."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    paths = []
    for i in range(k):
        torch.manual_seed(i)
        model = get_peft_model(
            AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False)
        )
        path = folder / f"adapter-{i}"
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        paths.append(str(path))
    return paths


def memory_child(adapters: list[str]) -> None:
    """Run in a subprocess: load a server with these adapters and print its resident memory in MB
    once loaded (peak RSS is the loading's transient, the same whatever is served)."""
    import gc

    import tunesmith

    app = tunesmith.serving_app(adapters, engine="transformers", workspace=tempfile.mkdtemp())
    gc.collect()
    status = Path("/proc/self/status").read_text()
    rss_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
    app.state.server.close()
    print(rss_kb / 1024, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def memory(adapters: list[str]) -> float:
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import serve_bench; serve_bench.memory_child({adapters!r})"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1].split()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--requests", type=int, default=32, help="requests per concurrency level")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--engines", default="transformers,llamacpp")
    parser.add_argument("--no-memory", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    import tunesmith

    conversations = prompts(args.requests)
    levels = [int(c) for c in args.clients.split(",")]
    rows: list[dict] = []
    load_before = os.getloadavg()[0]
    baseline = one_by_one(conversations, args.max_tokens)
    rows.append({"engine": "model.generate one by one", "clients": 1, **baseline})
    print(f"baseline: {baseline['tok_s']:.1f} tok/s", flush=True)
    package, gguf_name, _ = EMBEDDED[EMBEDDED_MODEL]
    import importlib.util

    gguf = str(Path(importlib.util.find_spec(package).submodule_search_locations[0]) / gguf_name)
    for engine in args.engines.split(","):
        if engine == "llamacpp" and importlib.util.find_spec("llama_cpp") is None:
            print("llamacpp: llama-cpp-python not installed, skipped", flush=True)
            continue
        model_arg = gguf if engine == "llamacpp" else EMBEDDED_MODEL
        app = tunesmith.serving_app([model_arg], engine=engine, workspace=tempfile.mkdtemp())
        url, server, thread = _serve(app)
        against_server(model_arg, engine, conversations[:2], 1, 4, url)  # warm-up
        for clients in levels:
            found = against_server(model_arg, engine, conversations, clients, args.max_tokens, url)
            rows.append({"engine": f"tunesmith serve --engine {engine}", "clients": clients, **found})
            print(f"{engine} x{clients}: {found['tok_s']:.1f} tok/s", flush=True)
        server.should_exit = True
        thread.join(10)
        app.state.server.close()
    mem = {}
    if not args.no_memory:
        with tempfile.TemporaryDirectory() as folder:
            adapters = make_adapters(resolve_model_path(EMBEDDED_MODEL), 4, Path(folder))
            mem = {"one_adapter_mb": memory(adapters[:1]), "four_adapters_mb": memory(adapters)}
            mem["ratio"] = mem["four_adapters_mb"] / mem["one_adapter_mb"]
    base_tok_s = baseline["tok_s"]
    print("\n| engine | clients | generated tok/s | x one-by-one | TTFT p50 s | latency p50 s | p95 s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        ttft = f"{row['ttft_s']:.2f}" if row["ttft_s"] is not None else "-"
        print(
            f"| {row['engine']} | {row['clients']} | {row['tok_s']:.1f} | {row['tok_s'] / base_tok_s:.1f} | {ttft} | {row['p50_s']:.2f} | {row['p95_s']:.2f} |"
        )
    if mem:
        print(f"\nserver RSS once loaded: 1 adapter {mem['one_adapter_mb']:.0f} MB, 4 adapters {mem['four_adapters_mb']:.0f} MB (x{mem['ratio']:.2f})")
    result = {
        "requests": args.requests,
        "max_tokens": args.max_tokens,
        "rows": rows,
        "memory": mem,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "load_before": load_before, "load_after": os.getloadavg()[0]},
    }
    out = Path(__file__).parent / "results" / "serve_bench.json"
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
