"""`tunesmith tune` against a grid over the same space: the best validation loss each finds, and the compute
each spends (optimiser steps actually run, and training seconds).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/tune_bench.py [--model tiny] [--trials 8] [--examples 60] [--steps 20] [--seeds 0-9] [--out FILE]

Scaled down from the quickstart so it runs in minutes on 2 CPU cores: the quickstart's task (demo support
tickets routed to JSON) on the test suite's tiny random-weight Llama (2 layers, hidden 32, its own BPE
tokenizer), or with `--model smollm2-135m-instruct` on the quickstart's own model, `--examples` tickets,
LoRA for `--steps` steps. The objective is
validation loss: the tiny model's exact match is 0 at any setting. Space: lr log-uniform in [1e-4, 0.3],
lora.r in {4, 8, 16}; the grid takes 8 log-spaced lrs x the 3 ranks (24 runs), the search `--trials`
trials (TPE, seeded, with each pruner in `--pruner`), once per sampler seed in `--seeds`: one seed can be lucky or unlucky,
so the verdict is how many seeds meet the target. Target: as good as the grid (best validation loss at most
the grid's best) with at most a third of its compute (optimiser steps).
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
    parser.add_argument("--model", default="tiny", help="tiny (the test suite's random-weight Llama) or a model name, e.g. smollm2-135m-instruct")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--examples", type=int, default=60)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--pruner", default="median", help="tune's --pruner: median, halving or none; several, comma-separated, search the same grid")
    parser.add_argument("--seeds", default="0-9", help="the search's sampler seeds: 0-9, or 0,3,7")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "tune_bench.json")
    args = parser.parse_args()

    import yaml
    from conftest import build_tiny_model, tickets_home, tiny_records

    import tunesmith
    from tunesmith.ui import console

    folder = Path(tempfile.mkdtemp(prefix="tune-bench-"))
    model = build_tiny_model(folder / "tiny", [m["content"] for r in tiny_records(200, 1) for m in r["messages"]]) if args.model == "tiny" else args.model
    workspace = tickets_home(folder / "home", args.examples)
    train = {"max_steps": args.steps, "batch_size": 4, "evals_per_epoch": 2, "lora": {"r": 8}}
    # no general-skills replay: grid and search train the same way, and the tiny model's figures predate it
    base = {"model": {"name": str(model)}, "data": {"dataset": "tickets", "keep_general": False}, "train": train}

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
    best_grid = min(grid, key=lambda g: g["val_loss"])
    summary = {
        "task": f"demo tickets x{args.examples}, {'tiny random Llama' if args.model == 'tiny' else args.model}, LoRA {args.steps} steps, objective validation loss",
        "grid": {
            "runs": len(grid),
            "best_val_loss": best_grid["val_loss"],
            "best": {"lr": best_grid["lr"], "r": best_grid["r"]},
            "steps": sum(g["steps"] for g in grid),
            "train_seconds": round(sum(g["seconds"] for g in grid), 1),
            "wall_seconds": round(grid_wall, 1),
        },
        "searches": [
            search_once(tunesmith, console, workspace, config, space, args, seed, pruner)
            for pruner in args.pruner.split(",")
            for seed in parse_seeds(args.seeds)
        ],
        "rows": {"grid": grid},
    }
    g = summary["grid"]
    print("| | runs | best val_loss | best setting | optimiser steps | train s | wall s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print(
        f"| grid | {g['runs']} | {g['best_val_loss']:.4f} | lr {g['best']['lr']:g}, r {g['best']['r']} | {g['steps']} | {g['train_seconds']} | {g['wall_seconds']} |"
    )
    met: dict[str, int] = {}
    for s in summary["searches"]:
        best = ", ".join(f"{k.split('.')[-1]} {v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]} {v}" for k, v in s["best"].items())
        s["as_good"] = s["best_val_loss"] <= g["best_val_loss"]
        s["steps_ratio"] = round(s["steps"] / g["steps"], 3)
        met[s["pruner"]] = met.get(s["pruner"], 0) + (s["as_good"] and s["steps_ratio"] <= 1 / 3)
        print(
            f"| search, {s['pruner']}, seed {s['seed']} | {s['trials']} ({s['pruned']} pruned) | {s['best_val_loss']:.4f} ({s['best_val_loss'] / g['best_val_loss']:.3f}x) "
            f"| {best} | {s['steps']} ({s['steps_ratio']:.2f}x) | {s['train_seconds']} | {s['wall_seconds']} |"
        )
    summary["seeds_meeting_target"] = met
    for pruner, count in met.items():
        seeds = sum(s["pruner"] == pruner for s in summary["searches"])
        print(f"{pruner}: seeds meeting the target (best val_loss <= the grid's, steps <= 1/3 of the grid's): {count} of {seeds}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))


def parse_seeds(text: str) -> list[int]:
    if "-" in text:
        first, last = text.split("-")
        return list(range(int(first), int(last) + 1))
    return [int(part) for part in text.split(",")]


def search_once(tunesmith, console, workspace, config: Path, space: Path, args: argparse.Namespace, seed: int, pruner: str) -> dict:
    started = time.perf_counter()
    console.quiet = True
    found = tunesmith.tune(config, trials=args.trials, space=space, name=f"bench-{pruner}-{seed}", seed=seed, pruner=pruner, workspace=workspace).best
    console.quiet = False
    wall = time.perf_counter() - started
    rows = []
    for row in found.rows:
        run_dir = workspace.run_dir(row["run_id"])
        info = json.loads((run_dir / "run.json").read_text())
        rows.append({**row, "steps": steps_run(run_dir), "seconds": info["train_seconds"]})
    return {
        "pruner": pruner,
        "seed": seed,
        "trials": len(rows),
        "pruned": sum(r["state"] == "pruned" for r in rows),
        "best_val_loss": found.best_value,
        "best": found.best_params,
        "steps": sum(r["steps"] for r in rows),
        "train_seconds": round(sum(r["seconds"] or 0 for r in rows), 1),
        "wall_seconds": round(wall, 1),
        "rows": rows,
    }


if __name__ == "__main__":
    main()
