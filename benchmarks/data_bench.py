"""Data-stage benchmark: validate and prepare throughput (examples/s) and peak memory.

    python benchmarks/data_bench.py --lines 1000000            # validate on 1M lines, prepare on --prepare-lines
    python benchmarks/data_bench.py --lines 200000 --prepare-lines 50000

Each measurement runs in its own process so peak RSS belongs to that stage alone. Results go
to benchmarks/results/data_bench.json and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent


def make_file(path: Path, lines: int, seed: int = 0) -> None:
    """Demo tickets in chat format; ~1% planted exact duplicates so dedup has work to do."""
    import random

    from tunesmith.demo.tickets import SYSTEM_PROMPT, make_ticket

    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as handle:
        previous = ""
        for index in range(lines):
            if previous and rng.random() < 0.01:
                handle.write(previous)
                continue
            text, answer = make_ticket(rng)
            record = {
                "messages": [
                    {"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": f"{text} (ref {index})"},
                    {"role": "assistant", "content": json.dumps(answer)},
                ],
                "label": answer["team"],
            }
            previous = json.dumps(record) + "\n"
            handle.write(previous)


STAGES = {
    "validate": "from tunesmith.data.validate import validate_file; r = validate_file(Path(sys.argv[1])); n = r.examples",
    "prepare": (
        "from tunesmith.data.dataset import prepare_dataset; from tunesmith.config import PrepareSpec; from tunesmith.workspace import Workspace; import tempfile;"
        # NER (spaCy) runs at ~60 examples/s and would dominate: the regex/checksum PII detectors still run.
        "d = prepare_dataset(Path(sys.argv[1]), Workspace.from_env(tempfile.mkdtemp()), options=PrepareSpec(pii_ner=False)); n = sum(d.manifest.counts.values())"
    ),
}


SETTINGS = {"validate": "defaults", "prepare": "defaults except pii_ner=False (--no-pii-ner): regex/checksum PII, exact + near dedup, split, leak check"}


def measure(stage: str, path: Path, lines: int) -> dict:
    code = (
        "import sys, time, json, resource; from pathlib import Path; t = time.perf_counter();"
        f"{STAGES[stage]};"
        "u = resource.getrusage(resource.RUSAGE_SELF);"
        # CPU seconds next to wall seconds: on a shared machine the wall clock also counts waiting.
        "print(json.dumps({'seconds': time.perf_counter() - t, 'cpu_seconds': u.ru_utime + u.ru_stime, 'examples_out': n,"
        " 'peak_rss_mb': u.ru_maxrss / 1024}))"
    )
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"stage": stage, "lines": lines, "error": done.stderr.strip().splitlines()[-1:]}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "stage": stage,
        "lines": lines,
        "examples_per_s": round(lines / result["seconds"], 1),
        "examples_per_cpu_s": round(lines / result["cpu_seconds"], 1),
        "settings": SETTINGS[stage],
        **result,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--prepare-lines", type=int, default=100_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tunesmith-data-bench"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = []
    for stage, lines in (("validate", args.lines), ("prepare", args.prepare_lines)):
        path = args.workdir / f"tickets-{lines}.jsonl"
        if not path.exists():
            started = time.perf_counter()
            make_file(path, lines)
            print(f"generated {path} ({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        results.append(measure(stage, path, lines))
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "data_bench.json").write_text(json.dumps(results, indent=2))
    print("| stage | lines | examples/s | seconds | CPU seconds | peak RSS (MB) |\n| --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(
            f"| {r['stage']} | {r['lines']:,} | {r.get('examples_per_s', '-')} | {r.get('seconds', 0):.1f} | {r.get('cpu_seconds', 0):.1f} | {r.get('peak_rss_mb', 0):.0f} |"
            if "error" not in r
            else f"| {r['stage']} | {r['lines']:,} | error: {r['error']} | | | |"
        )


if __name__ == "__main__":
    main()
