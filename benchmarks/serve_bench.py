"""Serving throughput and latency: `tunesmith serve` (each engine installed) under 1, 8 and 32
concurrent clients using the official `openai` client, against two baselines measured in the
same run: one-request-at-a-time `model.generate` on the same tuned model, and llama.cpp's own
server (`python -m llama_cpp.server`, when `llama-cpp-python[server]` is installed) on the same
GGUF export.

    python benchmarks/serve_bench.py                          # 1/8/32 clients, 2 requests each, 32 new tokens
    python benchmarks/serve_bench.py --clients 1,8 --quick    # a smoke run
    python benchmarks/serve_bench.py --engines transformers   # one engine

The model is the embedded SmolLM2-135M-Instruct with LoRA adapters from four short runs (one
optimiser step each, different seeds: the adapters' values do not change the cost of serving
them), trained in a scratch workspace by the benchmark itself. Prompts are the demo tickets'
held-out test prompts; answers are greedy, stop at the end of the turn as in production, and are
capped at --max-tokens new tokens; the server's tokens are counted from its `usage`, the
baseline's from its output, so tokens/s compares the same work.

Measured per engine and client count: generated tokens/s over the wall time of the whole wave,
time to first token (streamed requests) and p50/p95 request latency. Memory: the server's
resident memory (process tree) after serving one adapter, then after serving four.

Targets (issue 16): at 32 clients the default engine >= 8x one-by-one generate; `--engine auto`
within 0.8x of the fastest engine measured; four adapters' memory <= 1.2x one adapter's.
Prints a markdown table and writes benchmarks/results/serve_bench.json.

    python benchmarks/serve_bench.py --log-compare 3 --clients 8   # the cost of traffic logging (issue 19)

--log-compare N measures only what logging served traffic costs: two servers of the same run, one
with `--log off` and one with `--log redacted` (the default: PII scrubbed in a background thread),
loaded side by side and measured alternately, N waves each at each client count; after each
redacted wave it waits until the log has written every request (the scrub's backlog, reported as
"drain s") before the next wave starts, so neither server's work spills into the other's wave.
Target: redacted within 5% of off (median tokens/s). Writes benchmarks/results/serve_log_cost.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_runs(home: Path, n_adapters: int) -> tuple[list[str], list[list[dict]]]:
    """Four one-step LoRA runs on the embedded model, and the held-out test prompts as chat messages."""
    import tunesmith
    from tunesmith.demo.tickets import generate as demo_tickets

    source = home / "tickets.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in demo_tickets(200, 0)), encoding="utf-8")
    dataset = tunesmith.prepare_dataset(source, name="tickets", workspace=home, options={"pii": "off"})
    runs = []
    for seed in range(n_adapters):
        spec = {"name": f"bench-{seed}", "data": {"dataset": "tickets"}, "train": {"method": "lora", "max_steps": 1, "batch_size": 2, "seed": seed}}
        runs.append(tunesmith.train(spec, workspace=home).info.run_id)
        print(f"trained adapter {seed + 1}/{n_adapters}: {runs[-1]}", file=sys.stderr)
    prompts = [[m.model_dump(exclude_none=True) for m in e.prompt_messages] for e in dataset.iter_split("test")]
    return runs, prompts


def one_by_one(home: Path, run_id: str, prompts: list[list[dict]], max_tokens: int) -> dict:
    """The baseline a user without a server has: the tuned model, one `model.generate` per request."""
    import torch

    import tunesmith
    from tunesmith.chat_template import end_of_turn_ids, render_messages

    model, tokenizer = tunesmith.load_run(run_id, workspace=home).model()
    eot = end_of_turn_ids(tokenizer)
    latencies, tokens = [], 0
    started = time.perf_counter()
    with torch.no_grad():
        for messages in prompts:
            t0 = time.perf_counter()
            encoded = tokenizer(render_messages(tokenizer, messages), return_tensors="pt", add_special_tokens=False)
            out = model.generate(
                **encoded,
                max_new_tokens=max_tokens,
                do_sample=False,
                eos_token_id=eot,
                pad_token_id=eot[0],
                temperature=None,
                top_p=None,
                top_k=None,
            )
            tokens += out.shape[1] - encoded["input_ids"].shape[1]
            latencies.append(time.perf_counter() - t0)
    wall = time.perf_counter() - started
    return {
        "engine": "one-by-one model.generate",
        "clients": 1,
        "requests": len(prompts),
        "tokens": tokens,
        "wall_s": round(wall, 2),
        **summarise(latencies, [], tokens, wall),
    }


def summarise(latencies: list[float], ttfts: list[float], tokens: int, wall: float) -> dict:
    ordered = sorted(latencies)
    return {
        "tokens_per_s": round(tokens / wall, 1),
        "ttft_p50_s": round(statistics.median(ttfts), 3) if ttfts else None,
        "latency_p50_s": round(statistics.median(ordered), 3),
        "latency_p95_s": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 3),
    }


class Server:
    """A server process on 127.0.0.1 (tunesmith serve, or llama.cpp's), up until `stop`."""

    def __init__(self, command: list[str], port: int, env: dict, label: str):
        self.port, self.label = port, label
        self.log = tempfile.NamedTemporaryFile(prefix="serve-bench-", suffix=".log", delete=False)
        self.process = subprocess.Popen(command, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.wait_ready()

    def wait_ready(self, timeout: float = 600) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"{self.label} exited with {self.process.returncode}; its log: {self.log.name}\n" + Path(self.log.name).read_text()[-3000:])
            try:
                for path in ("/health", "/v1/models"):
                    if httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=2).status_code == 200:
                        return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise SystemExit(f"{self.label} did not answer within {timeout:.0f} s; its log: {self.log.name}")

    def rss_mb(self) -> int:
        import psutil

        root = psutil.Process(self.process.pid)
        return round(sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def wave(
    port: int, model_names: list[str], prompts: list[list[dict]], clients: int, per_client: int, max_tokens: int
) -> tuple[list[float], list[float], int, float]:
    """`clients` threads, each with its own `openai` client, each sending `per_client` streamed
    requests back to back (round-robin over the models): latencies, TTFTs, tokens, wall seconds."""
    from openai import OpenAI

    latencies, ttfts, token_counts = [], [], []
    lock = threading.Lock()
    failures: list[BaseException] = []

    def client_loop(index: int) -> None:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="bench", max_retries=0, timeout=600)
        for k in range(per_client):
            n = index * per_client + k
            started = time.perf_counter()
            first = None
            usage_tokens = 0
            chunks = 0
            try:
                stream = client.chat.completions.create(
                    model=model_names[n % len(model_names)],
                    messages=prompts[n % len(prompts)],
                    max_tokens=max_tokens,
                    temperature=0,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content and first is None:
                        first = time.perf_counter() - started
                    if chunk.choices and chunk.choices[0].delta.content:
                        chunks += 1
                    if chunk.usage is not None:
                        usage_tokens = chunk.usage.completion_tokens
            except BaseException as error:  # noqa: BLE001 - reported after the wave, with the others
                with lock:
                    failures.append(error)
                return
            with lock:
                latencies.append(time.perf_counter() - started)
                if first is not None:
                    ttfts.append(first)
                token_counts.append(usage_tokens or chunks)

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    if failures:
        raise SystemExit(f"{len(failures)} requests failed at {clients} clients; the first: {failures[0]!r}")
    return latencies, ttfts, sum(token_counts), wall


def per_client(clients: int, args: argparse.Namespace) -> int:
    """Requests each client sends: at least 8 requests in all, so a single client's figures are not two requests' noise."""
    return max(args.requests_per_client, -(-8 // clients))


def tunesmith_command(models: list[str], port: int, engine: str) -> list[str]:
    return [sys.executable, "-m", "tunesmith", "serve", *models, "--port", str(port), "--engine", engine]


def logged_count(port: int, metric: str = "tunesmith_traffic_logged_total") -> float:
    import httpx

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(metric + " "))


def cpu_seconds(server: Server) -> float:
    """The server process's CPU time so far (user + system, every thread)."""
    import psutil

    times = psutil.Process(server.process.pid).cpu_times()
    return times.user + times.system


def log_cost(home: Path, runs: list[str], prompts: list[list[dict]], env: dict, args: argparse.Namespace) -> None:
    """--log-compare: tokens/s with --log off against --log redacted, alternating waves, medians."""
    servers = {}
    for mode in ("off", "redacted"):
        port = free_port()
        servers[mode] = Server([*tunesmith_command(runs[:1], port, "transformers"), "--log", mode], port, env, f"tunesmith serve --log {mode}")
    rows, sent = [], 0
    try:
        for mode, server in servers.items():
            wave(server.port, runs[:1], prompts, 2, 1, 4)  # warm-up (and, for redacted, loading the NER model)
        sent = 2
        deadline = time.monotonic() + 120
        while logged_count(servers["redacted"].port) < sent and time.monotonic() < deadline:
            time.sleep(0.5)
        # Throughput on a shared machine moves by more than 5% from wave to wave; the log thread's own CPU
        # time against the whole server's, over the same waves, is the cost measured without that noise.
        cpu_before = cpu_seconds(servers["redacted"])
        log_cpu_before = logged_count(servers["redacted"].port, "tunesmith_traffic_log_cpu_seconds_total")
        for clients in [int(c) for c in args.clients.split(",")]:
            n = per_client(clients, args)
            for round_ in range(args.log_compare):
                order = ("off", "redacted") if round_ % 2 == 0 else ("redacted", "off")
                for mode in order:
                    port = servers[mode].port
                    latencies, ttfts, tokens, wall = wave(port, runs[:1], prompts, clients, n, args.max_tokens)
                    drain = 0.0
                    if mode == "redacted":
                        sent += len(latencies)
                        waited = time.perf_counter()
                        while logged_count(port) < sent and time.perf_counter() - waited < 300:
                            time.sleep(0.1)
                        drain = time.perf_counter() - waited
                    row = {"log": mode, "clients": clients, "round": round_, "requests": len(latencies), "tokens": tokens, "wall_s": round(wall, 2)}
                    rows.append({**row, **summarise(latencies, ttfts, tokens, wall), "drain_s": round(drain, 2)})
                    print(rows[-1], file=sys.stderr)
        logged = logged_count(servers["redacted"].port)
        server_cpu = cpu_seconds(servers["redacted"]) - cpu_before
        log_cpu = logged_count(servers["redacted"].port, "tunesmith_traffic_log_cpu_seconds_total") - log_cpu_before
    finally:
        for server in servers.values():
            server.stop()
    print("| clients | --log | waves | median tokens/s | each wave's tokens/s | median latency p50 s | max drain s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    summary = {}
    for clients in sorted({r["clients"] for r in rows}):
        for mode in ("off", "redacted"):
            mine = [r for r in rows if r["clients"] == clients and r["log"] == mode]
            speeds = [r["tokens_per_s"] for r in mine]
            summary[(clients, mode)] = statistics.median(speeds)
            print(
                f"| {clients} | {mode} | {len(mine)} | {statistics.median(speeds):.1f} | {', '.join(f'{v:.1f}' for v in speeds)} "
                f"| {statistics.median(r['latency_p50_s'] for r in mine):.3f} | {max(r['drain_s'] for r in mine):.2f} |"
            )
    for clients in sorted({r["clients"] for r in rows}):
        off, redacted = summary[(clients, "off")], summary[(clients, "redacted")]
        print(f"\n{clients} clients: redacted / off = {redacted / off:.3f} (cost {100 * (1 - redacted / off):.1f}%; target <= 5%)")
    print(f"records written by the redacted server: {logged:.0f} of {sent} requests sent")
    share = log_cpu / server_cpu if server_cpu else 0.0
    print(
        f"redacted server's CPU over its waves: {server_cpu:.1f} s, of which the log thread (scrub + write): {log_cpu:.2f} s = {100 * share:.2f}% "
        f"({1000 * log_cpu / max(1, sent - 2):.1f} ms per request)"
    )
    results = {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "max_tokens": args.max_tokens,
        "rows": rows,
        "server_cpu_s": round(server_cpu, 2),
        "log_cpu_s": round(log_cpu, 3),
        "log_cpu_share": round(share, 4),
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "serve_log_cost.json").write_text(json.dumps(results, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--engines", default="transformers,llamacpp,auto", help="tunesmith serve engines to measure (those not installed are skipped)")
    parser.add_argument("--adapters", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="one request per client, 16 new tokens")
    parser.add_argument("--home", type=Path, default=None, help="a workspace to keep the runs in (default: a temporary folder)")
    parser.add_argument("--log-compare", type=int, default=0, metavar="N", help="only measure traffic logging: --log off vs redacted, N waves each")
    args = parser.parse_args()
    if args.quick:
        args.requests_per_client, args.max_tokens = 1, 16
    client_counts = [int(c) for c in args.clients.split(",")]
    home = args.home or Path(tempfile.mkdtemp(prefix="serve-bench-"))
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TUNESMITH_HOME": str(home), "PYTHONPATH": str(HERE.parent / "src")}

    if args.log_compare:
        existing = sorted(p.name for p in (home / "runs").glob("bench-0-*") if (p / "run.json").is_file()) if (home / "runs").is_dir() else []
        if existing:  # a kept --home: reuse its run and prompts
            import tunesmith

            dataset = tunesmith.load_dataset("tickets", workspace=home)
            runs, prompts = existing[:1], [[m.model_dump(exclude_none=True) for m in e.prompt_messages] for e in dataset.iter_split("test")]
        else:
            runs, prompts = prepare_runs(home, 1)
        log_cost(home, runs, prompts, env, args)
        return
    runs, prompts = prepare_runs(home, args.adapters)
    rows: list[dict] = []
    n_baseline = min(len(prompts), max(8, args.requests_per_client * 4))
    rows.append(one_by_one(home, runs[0], prompts[:n_baseline], args.max_tokens))
    print(f"baseline: {rows[-1]}", file=sys.stderr)

    # a GGUF of the same tuned model, for the llama.cpp engine and llama.cpp's own server
    gguf_dir = home / "export-gguf"
    gguf_file = None
    made = subprocess.run(
        [sys.executable, "-m", "tunesmith", "export", runs[0], "--to", "gguf", "--out", str(gguf_dir)], env=env, capture_output=True, text=True
    )
    if made.returncode == 0:
        gguf_file = next(gguf_dir.glob("*.gguf"), None)
    else:
        print(f"no GGUF export (llama.cpp engines skipped): {made.stderr.strip()[-500:]}", file=sys.stderr)

    memory: dict[str, int] = {}
    for engine in args.engines.split(","):
        served = [str(gguf_dir)] if engine == "llamacpp" else runs
        if engine == "llamacpp" and gguf_file is None:
            continue
        port = free_port()
        try:
            server = Server(tunesmith_command(served, port, engine), port, env, f"tunesmith serve --engine {engine}")
        except SystemExit as why:
            print(f"engine {engine} skipped: {str(why)[:800]}", file=sys.stderr)
            continue
        try:
            names = [m.id for m in __import__("openai").OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x").models.list().data]
            targets = [n for n in names if n in served] or names
            wave(port, targets, prompts, 2, 1, 4)  # warm-up: first requests pay for lazy loading
            if engine == "transformers":  # after the same warm-up as the one-adapter server below, before the waves grow its caches
                memory[f"{len(targets)} adapters"] = server.rss_mb()
            for clients in client_counts:
                latencies, ttfts, tokens, wall = wave(port, targets, prompts, clients, per_client(clients, args), args.max_tokens)
                rows.append(
                    {
                        "engine": f"tunesmith serve --engine {engine}",
                        "clients": clients,
                        "requests": len(latencies),
                        "tokens": tokens,
                        "wall_s": round(wall, 2),
                        **summarise(latencies, ttfts, tokens, wall),
                    }
                )
                print(rows[-1], file=sys.stderr)
        finally:
            server.stop()

    if "transformers" in args.engines.split(","):
        port = free_port()
        server = Server(tunesmith_command(runs[:1], port, "transformers"), port, env, "tunesmith serve, one adapter")
        try:
            wave(port, runs[:1], prompts, 2, 1, 4)
            memory["1 adapter"] = server.rss_mb()
            for clients in client_counts:  # the cost of serving several adapters unmerged, against one
                latencies, ttfts, tokens, wall = wave(port, runs[:1], prompts, clients, per_client(clients, args), args.max_tokens)
                row = {"engine": "tunesmith serve --engine transformers, one run", "clients": clients, "requests": len(latencies), "tokens": tokens}
                rows.append({**row, "wall_s": round(wall, 2), **summarise(latencies, ttfts, tokens, wall)})
                print(rows[-1], file=sys.stderr)
        finally:
            server.stop()

    if gguf_file is not None:
        try:
            import llama_cpp.server  # noqa: F401 - only to know whether the [server] extra is there
        except ImportError as missing:
            print(f"llama.cpp's own server skipped: {missing} (pip install 'llama-cpp-python[server]')", file=sys.stderr)
        else:
            port = free_port()
            command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_file), "--port", str(port), "--host", "127.0.0.1", "--n_ctx", "2048"]
            command += ["--interrupt_requests", "False"]  # its default cuts a running answer short when the next request arrives
            server = Server(command, port, env, "llama.cpp server")
            try:
                names = [m.id for m in __import__("openai").OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x").models.list().data]
                wave(port, names, prompts, 2, 1, 4)
                for clients in client_counts:
                    latencies, ttfts, tokens, wall = wave(port, names, prompts, clients, per_client(clients, args), args.max_tokens)
                    rows.append(
                        {
                            "engine": "llama.cpp server (same GGUF)",
                            "clients": clients,
                            "requests": len(latencies),
                            "tokens": tokens,
                            "wall_s": round(wall, 2),
                            **summarise(latencies, ttfts, tokens, wall),
                        }
                    )
            finally:
                server.stop()

    baseline = rows[0]["tokens_per_s"]
    for row in rows:
        row["vs_one_by_one"] = round(row["tokens_per_s"] / baseline, 2)
    print("| engine | clients | requests | tokens/s | x one-by-one | TTFT p50 s | latency p50 s | p95 s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['engine']} | {r['clients']} | {r['requests']} | {r['tokens_per_s']} | {r['vs_one_by_one']} | {r['ttft_p50_s']} | {r['latency_p50_s']} | {r['latency_p95_s']} |"
        )
    if memory:
        print("\nserver resident memory (MB): " + ", ".join(f"{k}: {v}" for k, v in memory.items()))
        if "1 adapter" in memory and len(memory) > 1:
            many = next(v for k, v in memory.items() if k != "1 adapter")
            print(f"{args.adapters} adapters / 1 adapter: {many / memory['1 adapter']:.2f}x (target <= 1.2x)")
    results = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "max_tokens": args.max_tokens, "rows": rows, "memory_mb": memory}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "serve_bench.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
