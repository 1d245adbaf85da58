"""What the fine-tuning service costs on top of training: a job submitted through the official
`openai` client against `tunesmith api`, against the same training started from the command line.

    python benchmarks/api_bench.py                 # 200 demo tickets, SmolLM2-135M, 1 epoch
    python benchmarks/api_bench.py --examples 60   # a smoke run

Measured, each in the same run on the same machine:
- submit to first step: from `client.fine_tuning.jobs.create` returning to the first event that
  carries a training step's metrics (the upload is timed apart), against the time from starting
  `tunesmith data prepare FILE --pii off` (the service does not scan uploads for PII either) and then
  `tunesmith train` to the first step record in the run's metrics.jsonl. Both include validating and
  preparing the file, process starts, loading the model and the pre-training estimate; the
  difference is what the service adds (queue, worker, runner process, database writes).
- events latency while the job trains: p50/p95 of `client.fine_tuning.jobs.list_events` round trips
  (the endpoint a client polls), and how far behind the newest step event is from the run's own
  metrics log at the moment of each poll.

Prints a markdown table and writes benchmarks/results/api_bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from serve_bench import Server, free_port  # noqa: E402  (one way to start and await a server process)

BASE_MODEL = "smollm2-135m-instruct"


def write_tickets(path: Path, n: int) -> None:
    from tunesmith.demo.tickets import generate

    rows = [{"messages": r["messages"]} for r in generate(n, 0)]  # OpenAI's chat format: messages only
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def steps_logged(home: Path) -> list[int]:
    """Training steps in every run's metrics.jsonl under this workspace (the truth the events come from)."""
    steps = []
    for log in (home / "runs").glob("*/metrics.jsonl"):
        for line in log.read_text(encoding="utf-8").splitlines():
            record = json.loads(line) if line.strip() else {}
            if "loss" in record and "event" not in record:
                steps.append(record["step"])
    return steps


def cli_first_step(tickets: Path, env: dict, epochs: int, batch_size: int) -> float:
    """Seconds from starting `tunesmith data prepare` (PII off, as the service prepares a job's file)
    to the first step record of the `tunesmith train` that follows it."""
    home, tunesmith = Path(env["TUNESMITH_HOME"]), str(Path(sys.executable).parent / "tunesmith")
    started = time.perf_counter()
    subprocess.run([tunesmith, "data", "prepare", str(tickets), "--out", "tickets", "--pii", "off"], env=env, check=True, stdout=subprocess.DEVNULL)
    command = [tunesmith, "train", "--data", "tickets", "--epochs", str(epochs), "--batch-size", str(batch_size)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while not steps_logged(home):
            if process.poll() is not None:
                raise SystemExit(f"`{' '.join(command)}` exited {process.returncode}:\n{process.stderr.read()[-3000:]}")
            time.sleep(0.05)
        return time.perf_counter() - started
    finally:
        process.kill()
        process.wait()


def is_step_event(event) -> bool:
    return event.type == "metrics" and isinstance(event.data, dict) and "train_loss" in event.data


def api_job(tickets: Path, env: dict, epochs: int, batch_size: int, polls: int) -> dict:
    from openai import OpenAI

    home, port = Path(env["TUNESMITH_HOME"]), free_port()
    server = Server([str(Path(sys.executable).parent / "tunesmith"), "api", "--port", str(port), "--workers", "1"], port, env, "tunesmith api")
    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
    try:
        t0 = time.perf_counter()
        with tickets.open("rb") as handle:
            uploaded = client.files.create(file=handle, purpose="fine-tune")
        upload_s = time.perf_counter() - t0
        hyperparameters = {"n_epochs": epochs, "batch_size": batch_size}
        job = client.fine_tuning.jobs.create(
            model=BASE_MODEL, training_file=uploaded.id, method={"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}
        )
        submitted = time.perf_counter()
        while not any(is_step_event(e) for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data):
            status = client.fine_tuning.jobs.retrieve(job.id)
            if status.status in ("failed", "cancelled", "succeeded"):
                raise SystemExit(f"job {job.id} ended {status.status} before its first step: {status.error}")
            time.sleep(0.05)
        first_step_s = time.perf_counter() - submitted

        latencies, lags = [], []
        for _ in range(polls):
            t = time.perf_counter()
            events = client.fine_tuning.jobs.list_events(job.id, limit=20).data
            latencies.append(time.perf_counter() - t)
            shown = max((e.data["step"] for e in events if is_step_event(e)), default=0)
            lags.append(max(steps_logged(home), default=0) - shown)
            if client.fine_tuning.jobs.retrieve(job.id).status != "running":
                break
            time.sleep(0.2)
        client.fine_tuning.jobs.cancel(job.id)
        ordered = sorted(latencies)
        return {
            "upload_s": round(upload_s, 3),
            "submit_to_first_step_s": round(first_step_s, 2),
            "events_polls": len(latencies),
            "events_p50_ms": round(statistics.median(ordered) * 1000, 1),
            "events_p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1000, 1),
            "events_steps_behind_max": max(lags),
        }
    finally:
        server.process.terminate()
        server.process.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--polls", type=int, default=50, help="events requests timed while the job trains")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="api-bench-"))
    tickets = scratch / "tickets.jsonl"
    write_tickets(tickets, args.examples)
    env = {**os.environ, "TUNESMITH_HOME": str(scratch / "cli")}
    cli_s = cli_first_step(tickets, env, args.epochs, args.batch_size)
    served = api_job(tickets, {**env, "TUNESMITH_HOME": str(scratch / "api")}, args.epochs, args.batch_size, args.polls)
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "model": BASE_MODEL,
        "examples": args.examples,
        "cli_start_to_first_step_s": round(cli_s, 2),
        **served,
        "overhead_s": round(served["submit_to_first_step_s"] - cli_s, 2),
    }
    print("| measure | value |\n|---|---|")
    for key, value in result.items():
        print(f"| {key} | {value} |")
    out = HERE / "results" / "api_bench.json"
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
