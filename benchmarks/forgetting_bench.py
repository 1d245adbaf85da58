"""One row of docs/forgetting.md's table: the quickstart's task trained with one keep_general setting, then
exact match on the test split and the general-skills probe, base against tuned, with the drop's interval.

    PYTHONPATH=src python benchmarks/forgetting_bench.py --keep-general 0.2 --epochs 2 [--lr 2e-3] [--rank 16] [--examples 500] [--home DIR]

--keep-general 0 trains without the guard; --lr and --rank measure the other guard the issue names, a
smaller update (the quickstart trains at lr 2e-3 and rank 16). The base model's exact match and probe are scored once per --home
and kept there (base-N.json), so a second row costs its training and the tuned model's scoring only
(about 12 minutes for a 2-epoch row on a quiet 2-core CPU). Run one at a time: rows that share the
cores cost more than the sum of both.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep-general", type=float, default=0.2, help="the replay's share of each epoch; 0: no guard")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=2e-3, help="the quickstart's learning rate by default")
    parser.add_argument("--rank", type=int, default=16, help="LoRA's r; alpha stays twice r, as the quickstart's")
    parser.add_argument(
        "--target", choices=("answer", "distribution"), default="answer", help="data.keep_general.target: the base's greedy answer, or its distribution (KL)"
    )
    parser.add_argument("--examples", type=int, default=500, help="demo tickets, as `tunesmith quickstart --examples`")
    parser.add_argument("--home", type=Path, default=Path(tempfile.gettempdir()) / "tunesmith-forgetting-bench", help="the workspace the rows share")
    parser.add_argument("--out", type=Path, default=None, help="the row as JSON (default: HOME/row-EPOCHS-SHARE.json)")
    args = parser.parse_args()

    from tunesmith.cli.quickstart import DATASET, EVAL
    from tunesmith.config import RunSpec
    from tunesmith.data.dataset import prepare_dataset
    from tunesmith.demo.tickets import write_jsonl
    from tunesmith.eval.evaluate import eval_examples, evaluate_model
    from tunesmith.eval.forgetting import probe_drop, run_probe, wilson_interval
    from tunesmith.models.artefact import load_tuned
    from tunesmith.models.loading import load_model
    from tunesmith.train.recipe import train
    from tunesmith.workspace import Workspace

    workspace = Workspace.from_env(str(args.home))
    source = workspace.home / f"tickets-{args.examples}.jsonl"
    if not source.exists():
        write_jsonl(source, args.examples, 0)
    dataset = prepare_dataset(source, workspace, name=f"{DATASET}-{args.examples}-0", seed=0)
    keep = {"fraction": args.keep_general, "target": args.target} if args.keep_general > 0 else False
    spec = RunSpec.model_validate(
        {
            "name": f"forgetting-{args.epochs}ep-{args.keep_general:g}-{args.target}-lr{args.lr:g}-r{args.rank}",
            "data": {"dataset": dataset.name, "keep_general": keep},
            "train": {
                "method": "lora",
                "epochs": args.epochs,
                "lr": args.lr,
                "batch_size": 4,
                "evals_per_epoch": 2,
                "seed": 0,
                "lora": {"r": args.rank, "alpha": 2 * args.rank},
            },
            "eval": EVAL.model_dump(),
        }
    )
    examples = eval_examples(dataset, EVAL)
    base_file = workspace.home / f"base-{args.examples}.json"
    if not base_file.exists():
        model, tokenizer, _ = load_model(spec.model)
        _, metrics = evaluate_model(model, tokenizer, examples, EVAL, "base")
        base_file.write_text(json.dumps({"metrics": metrics, "probe": run_probe(model, tokenizer)}))
        del model
    base = json.loads(base_file.read_text())

    started = time.perf_counter()
    result = train(spec, workspace)
    train_seconds = time.perf_counter() - started
    model, tokenizer = load_tuned(result.run_dir, result.info, spec.model)
    _, metrics = evaluate_model(model, tokenizer, examples, EVAL, "tuned")
    probe = run_probe(model, tokenizer)
    drop = probe_drop(base["probe"], probe)
    correct = sum(row["correct"] for row in probe["rows"])
    low, high = wilson_interval(correct, len(probe["rows"]))
    steps = sum(1 for line in (result.run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line)
    row = {
        "epochs": args.epochs,
        "keep_general": args.keep_general,
        "target": args.target,
        "lr": args.lr,
        "rank": args.rank,
        "exact_match": metrics["exact_match"],
        "fields": {k.split(".", 1)[1]: v for k, v in metrics.items() if k.startswith("field_accuracy.")},
        "probe_base": base["probe"]["score"],
        "probe_tuned": probe["score"],
        "probe_tuned_interval": [round(low, 3), round(high, 3)],
        "drop": {k: drop[k] for k in ("drop", "low", "high", "p_value", "regressed", "improved")},
        "per_category": {"tuned": probe["per_category"], "base": base["probe"]["per_category"]},
        "steps": steps,
        "train_seconds": round(train_seconds),
        "run": result.info.run_id,
    }
    out = args.out or workspace.home / f"row-{args.epochs}-{args.keep_general:g}-{args.target}-lr{args.lr:g}-r{args.rank}.json"
    out.write_text(json.dumps(row, indent=2))
    d = row["drop"]
    print(
        f"| {args.epochs} | keep_general {args.keep_general:g} ({args.target}), lr {args.lr:g}, r {args.rank} | {row['exact_match']:.2f} | "
        + " / ".join(f"{row['fields'].get(f, 0):.2f}" for f in ("priority", "team", "product"))
        + f" | {probe['score']:.3f} ({low:.3f}-{high:.3f}) | {d['drop']:+.3f} ({d['low']:+.3f} to {d['high']:+.3f}), p {d['p_value']:.2g} "
        f"| {d['regressed']} / {d['improved']} | {steps} |"
    )


if __name__ == "__main__":
    main()
