"""The monitor's simulation: detection delay per kind of shift and the false-alarm rate on traffic drawn
from the training distribution.

    PYTHONPATH=src python benchmarks/monitor_sim.py [--windows 100] [--window-size 100] [--trials 10]

The ticket router's dataset is prepared from the demo generator (tunesmith.demo.tickets); traffic is
drawn from the same generator (in-distribution) or shifted (tunesmith.demo.traffic: new product codes,
a cooking-questions domain, German tickets, broken answers). Each window runs every check the monitor
runs (monitor.report.check_window, the same function `tunesmith monitor` calls), with the default
monitor.yaml. Prompts come from pools embedded once, so 100 windows take minutes, not hours.

- false alarms: the share of in-distribution windows in which any check alerts;
- detection delay: the fewest shifted requests in a window at which the shift is flagged, per trial
  (grid --grid), as the median and the worst over --trials trials, and the check that flagged it.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=500, help="demo tickets in the training dataset (split 70/10/20)")
    parser.add_argument("--windows", type=int, default=100, help="in-distribution windows for the false-alarm rate")
    parser.add_argument("--window-size", type=int, default=100, help="requests per in-distribution window")
    parser.add_argument("--trials", type=int, default=10, help="trials per kind of shift")
    parser.add_argument("--grid", default="10,20,30,40,60,80,120", help="window sizes tried for the detection delay")
    parser.add_argument("--alpha", type=float, default=None, help="thresholds.alpha (default: monitor.yaml's default)")
    parser.add_argument("--min-requests", type=int, default=None, help="drift.min_requests (default: monitor.yaml's default, 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "monitor_sim.json")
    args = parser.parse_args()

    from tunesmith.config import PrepareSpec
    from tunesmith.data.dataset import load_dataset, prepare_dataset
    from tunesmith.demo.tickets import write_jsonl
    from tunesmith.demo.traffic import SHIFTS, make_window
    from tunesmith.monitor.config import MonitorConfig
    from tunesmith.monitor.reference import dataset_reference
    from tunesmith.monitor.report import check_window
    from tunesmith.monitor.text import DEFAULT_ENCODER
    from tunesmith.workspace import Workspace

    config = MonitorConfig()
    if args.alpha is not None:
        config.thresholds.alpha = args.alpha
    if args.min_requests is not None:
        config.drift.min_requests = args.min_requests
    grid = [int(n) for n in args.grid.split(",")]
    started = time.time()
    with tempfile.TemporaryDirectory() as folder:
        workspace = Workspace.from_env(Path(folder))
        source = Path(folder) / "tickets.jsonl"
        write_jsonl(source, args.examples, args.seed)
        prepare_dataset(source, workspace, name="tickets", seed=args.seed, ratios=(0.7, 0.1, 0.2), options=PrepareSpec(pii="off"))
        reference = dataset_reference(load_dataset(workspace, "tickets"), DEFAULT_ENCODER, seed=config.drift.seed, sample=config.drift.reference_sample)
    pool_size = {"in_distribution": max(2000, args.window_size * 10)}
    pools = {
        kind: make_window(kind, pool_size.get(kind, 400), start=0.0, seconds=3600.0, model="router", run_id=None, seed=args.seed + 1 + i)
        for i, kind in enumerate(SHIFTS)
    }
    prompts = sorted({m["content"] for pool in pools.values() for r in pool for m in r.messages or [] if m["role"] == "user"})
    DEFAULT_ENCODER.embed(prompts)  # once: each window then only looks its prompts up
    print(f"reference: {len(reference.lengths)} dataset prompts; pools embedded ({len(prompts)} prompts) in {time.time() - started:.0f} s")

    rng = random.Random(args.seed)

    def run(kind: str, n: int) -> list[str]:
        window = rng.sample(pools[kind], n)
        earlier = rng.sample(pools["in_distribution"], args.window_size)
        return [c.name for c in check_window(window, earlier, reference, config, DEFAULT_ENCODER) if c.status == "alert"]

    # false alarms
    fired: Counter[str] = Counter()
    alarms = 0
    for _ in range(args.windows):
        names = run("in_distribution", args.window_size)
        alarms += bool(names)
        fired.update(names)
    false_alarm = alarms / args.windows

    # detection delay
    delays: dict[str, dict] = {}
    for kind in SHIFTS[1:]:
        found, by = [], Counter()
        for _ in range(args.trials):
            for n in grid:
                names = run(kind, n)
                if names:
                    found.append(n)
                    by.update(names)
                    break
            else:
                found.append(None)
        flagged = [n for n in found if n is not None]
        delays[kind] = {
            "median": statistics.median(flagged) if flagged else None,
            "worst": max(flagged) if len(flagged) == len(found) else None,
            "missed": len(found) - len(flagged),
            "checks": dict(by.most_common()),
        }

    print(
        f"\nfalse alarms: {alarms} of {args.windows} in-distribution windows of {args.window_size} requests ({false_alarm:.1%}); alpha {config.thresholds.alpha}"
    )
    if fired:
        print("  checks that fired: " + ", ".join(f"{k} {v}" for k, v in fired.most_common()))
    print(f"\n| shift | requests until flagged (median) | worst of {args.trials} | missed (> {grid[-1]}) | checks that flagged it |")
    print("| --- | --- | --- | --- | --- |")
    for kind, row in delays.items():
        checks = ", ".join(f"{k} ({v})" for k, v in row["checks"].items())
        print(f"| {kind} | {row['median']} | {row['worst'] if row['worst'] is not None else '-'} | {row['missed']} | {checks} |")
    print(f"\n{time.time() - started:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "alpha": config.thresholds.alpha,
                "min_requests": config.drift.min_requests,
                "false_alarm_rate": false_alarm,
                "false_alarm_checks": dict(fired),
                "delays": delays,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
