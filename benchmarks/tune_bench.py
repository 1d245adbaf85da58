"""`tunesmith tune` against a grid over the same space: the best validation loss each finds, and the compute
each spends (optimiser steps actually run, and training seconds).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/tune_bench.py [--trials 8] [--examples 60] [--steps 20] [--seed 0] [--out FILE]

Scaled down from the quickstart so it runs in minutes on 2 CPU cores: the quickstart's task (demo support
tickets routed to JSON) on the test suite's tiny random-weight Llama (2 layers, hidden 32, its own BPE
tokenizer) instead of SmolLM2-135M, `--examples` tickets, LoRA for `--steps` steps. The objective is
validation loss: the tiny model's exact match is 0 at any setting. Space: lr log-uniform in [1e-4, 0.3],
lora.r in {4, 8, 16}; the grid takes 8 log-spaced lrs x the 3 ranks (24 runs), the search `--trials`
trials (TPE, seeded, median pruner). Target: as good as the grid with at most a third of its compute.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

GRID_LR = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)
GRID_R = (4, 8, 16)


def steps_run(run_dir: Path) -> int:
    return sum(1 for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--examples", type=int, default=60)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="the search's sampler seed")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "tune_bench.json")
    args = parser.parse_args()

    import yaml
    from conftest import build_tiny_model, tickets_home, tiny_records

    import tunesmith
    from tunesmith.ui import console

    folder = Path(tempfile.mkdtemp(prefix="tune-bench-"))
    model = build_tiny_model(folder / "tiny", [m["content"] for r in tiny_records(200, 1) for m in r["messages"]])
    workspace = tickets_home(folder / "home", args.examples)
    train = {"max_steps": args.steps, "batch_size": 4, "evals_per_epoch": 2, "lora": {"r": 8}}
    base = {"model": {"name": str(model)}, "data": {"dataset": "tickets"}, "train": train}

    started = time.perf_counter()
    grid = []
    for lr in GRID_LR:
        for r in GRID_R:
            spec = {**base, "name": f"grid-{lr:g}-{r}", "train": {**train, "lr": lr, "lora": {"r": r}}}
            console.quiet = True
            result = tunesmith.train(spec, workspace=workspace)
            console.quiet = False
            grid.append({"lr": lr, "r": r, "val_loss": result.info.best_val_loss, "steps": steps_run(result.run_dir), "seconds": result.info.train_seconds})
    grid_wall = time.perf_counter() - started

    space = folder / "space.yaml"
    space.write_text(yaml.safe_dump({"use_defaults": False, "params": {"train.lr": {"low": 1e-4, "high": 0.3, "log": True}, "train.lora.r": list(GRID_R)}}))
    config = folder / "run.yaml"
    config.write_text(yaml.safe_dump(base))
    started = time.perf_counter()
    console.quiet = True
    found = tunesmith.tune(config, trials=args.trials, space=space, name="bench", seed=args.seed, workspace=workspace).best
    console.quiet = False
    search_wall = time.perf_counter() - started
    search = []
    for row in found.rows:
        run_dir = workspace.run_dir(row["run_id"])
        info = json.loads((run_dir / "run.json").read_text())
        search.append({**row, "steps": steps_run(run_dir), "seconds": info["train_seconds"]})

    best_grid = min(grid, key=lambda g: g["val_loss"])
    summary = {
        "seed": args.seed,
        "task": f"demo tickets x{args.examples}, tiny random Llama, LoRA {args.steps} steps, objective validation loss",
        "grid": {
            "runs": len(grid),
            "best_val_loss": best_grid["val_loss"],
            "best": {"lr": best_grid["lr"], "r": best_grid["r"]},
            "steps": sum(g["steps"] for g in grid),
            "train_seconds": round(sum(g["seconds"] for g in grid), 1),
            "wall_seconds": round(grid_wall, 1),
        },
        "search": {
            "trials": len(search),
            "pruned": sum(s["state"] == "pruned" for s in search),
            "best_val_loss": found.best_value,
            "best": found.best_params,
            "steps": sum(s["steps"] for s in search),
            "train_seconds": round(sum(s["seconds"] or 0 for s in search), 1),
            "wall_seconds": round(search_wall, 1),
        },
        "rows": {"grid": grid, "search": search},
    }
    g, s = summary["grid"], summary["search"]
    print("| | runs | best val_loss | best setting | optimiser steps | train s | wall s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print(
        f"| grid | {g['runs']} | {g['best_val_loss']:.4f} | lr {g['best']['lr']:g}, r {g['best']['r']} | {g['steps']} | {g['train_seconds']} | {g['wall_seconds']} |"
    )
    best = ", ".join(f"{k.split('.')[-1]} {v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]} {v}" for k, v in s["best"].items())
    print(f"| search | {s['trials']} ({s['pruned']} pruned) | {s['best_val_loss']:.4f} | {best} | {s['steps']} | {s['train_seconds']} | {s['wall_seconds']} |")
    print(
        f"\nsearch / grid: best val_loss {s['best_val_loss'] / g['best_val_loss']:.3f}x, steps {s['steps'] / g['steps']:.2f}x, wall {s['wall_seconds'] / g['wall_seconds']:.2f}x"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
