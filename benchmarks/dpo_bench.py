"""DPO speed and memory against TRL's DPOTrainer, on the same pairs and model.

    python benchmarks/dpo_bench.py                              # 32 pairs (4 steps, 3 timed), every config
    python benchmarks/dpo_bench.py --pairs 16 --configs trl_lora_fast,tunesmith_lora

The embedded SmolLM2-135M-Instruct, fp32, one epoch over the same preference pairs (a demo
ticket's prompt; its right JSON answer preferred to one with another team and priority), batch 8
pairs, AdamW lr 5e-4 (LoRA) / 5e-6 (full), linear decay, no warm-up, clip 1.0, DPO sigmoid loss
beta 0.1, seed 0, max length 512. LoRA r16/alpha 32 on every linear layer. Configs:

  trl_lora_default  TRL 1.16 DPOTrainer + PEFT LoRA with its defaults (gradient checkpointing on,
                    the reference by running each batch again with the adapter disabled), fp32
  trl_lora_fast     the same without gradient checkpointing and with precompute_ref_log_probs=True
                    (TRL's own option to score the reference once, before training)
  tunesmith_lora    `train.task: preference`, method lora
  trl_full          DPOTrainer, full fine-tuning: a second, frozen copy of the model is the reference
                    (no gradient checkpointing)
  trl_full_precomputed  the same with precompute_ref_log_probs=True (TRL still loads the reference copy)
  tunesmith_full    `train.task: preference`, method full

Each config runs in its own process, so its peak RSS (the process's high-water mark, model loading
included) is its own. Throughput: real (non-pad) tokens of both answers' rows per second over the
optimiser steps (the same window for all, as benchmarks/train_bench.py: from the end of the first
step, left out as warm-up, to the end of the last); the reference pass before training is timed separately
(`ref_seconds`, tunesmith; TRL's precomputation runs inside DPOTrainer's constructor, timed with its
tokenisation as `setup_seconds`) and the whole training call too (`total_seconds`;
tunesmith's pre-training estimate, which times ~6 steps of its own, is switched off here). Writes
results/dpo_bench.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from train_bench import StepClock, cpu_seconds, lora_config  # noqa: E402 - the training bench's clock and LoRA settings, shared

CONFIGS = ["trl_lora_default", "trl_lora_fast", "tunesmith_lora", "trl_full", "trl_full_precomputed", "tunesmith_full"]
BETA, MAX_LEN, SEED, BATCH = 0.1, 512, 0, 8
WARMUP = 1  # steps left out of the timed window (first-call kernel compilation, allocator growth)
LR = {"lora": 5e-4, "full": 5e-6}


def make_pairs(n: int, seed: int) -> list[dict]:
    """Conversational prompt/chosen/rejected pairs: the ticket's answer preferred to a wrong one."""
    from tunesmith.demo.tickets import PRIORITY_CUES, TEAMS, generate

    rng = random.Random(seed)
    pairs = []
    for record in generate(n, seed):
        prompt, answer = record["messages"][:-1], json.loads(record["messages"][-1]["content"])
        wrong = {
            **answer,
            "team": rng.choice([t for t in TEAMS if t != answer["team"]]),
            "priority": rng.choice([p for p in PRIORITY_CUES if p != answer["priority"]] or [answer["priority"]]),
        }
        pairs.append(
            {
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": json.dumps(answer)}],
                "rejected": [{"role": "assistant", "content": json.dumps(wrong)}],
            }
        )
    return pairs


def model_path() -> str:
    from tunesmith.models.loading import resolve_model_path

    return resolve_model_path("smollm2-135m-instruct")


def run_trl(name: str, folder: Path) -> dict:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    method = "full" if "full" in name else "lora"
    path = model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    pairs = [json.loads(line) for line in (folder / "pairs.jsonl").read_text().splitlines()]
    torch.manual_seed(SEED)
    args = DPOConfig(
        output_dir=str(folder / name),
        per_device_train_batch_size=BATCH,
        num_train_epochs=1,
        learning_rate=LR[method],
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        beta=BETA,
        max_length=MAX_LEN,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=SEED,
        disable_tqdm=True,
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=name == "trl_lora_default",
        precompute_ref_log_probs=name in ("trl_lora_fast", "trl_full_precomputed"),
    )
    clock = StepClock(WARMUP)
    started = time.perf_counter()
    # TRL tokenizes the pairs and, with precompute_ref_log_probs, scores the reference in its constructor
    trainer = DPOTrainer(
        model=model,
        ref_model=None,
        args=args,
        train_dataset=datasets.Dataset.from_list(pairs),
        processing_class=tokenizer,
        peft_config=lora_config() if method == "lora" else None,
        callbacks=[clock.callback()],
    )
    setup_seconds = round(time.perf_counter() - started, 2)
    clock.count_inputs(trainer)
    trainer.train()
    return {
        "steps": trainer.state.global_step,
        **clock.figures(),
        "ref_seconds": None,  # not separable from the constructor's other work: see setup_seconds
        "setup_seconds": setup_seconds,
        "total_seconds": round(time.perf_counter() - started, 2),
    }


def run_tunesmith(name: str, folder: Path) -> dict:
    from tunesmith.config import DataSpec, ModelSpec, PrepareSpec, RunSpec, TrainSpec
    from tunesmith.train import loop as loop_module
    from tunesmith.train.recipe import train
    from tunesmith.train.tasks import preference as task_module
    from tunesmith.workspace import Workspace

    method = "full" if "full" in name else "lora"
    clock, step = StepClock(WARMUP), loop_module.optimizer_step

    def timed_step(*args, **kwargs):
        clock.begin()
        out = step(*args, **kwargs)
        clock.count(out[3])  # (loss, grad norm, trained pairs, real tokens)
        clock.finish()
        return out

    loop_module.optimizer_step = timed_step
    reference, ref_seconds = task_module.reference_logps, []

    def timed_reference(*args, **kwargs):
        began = time.perf_counter()
        out = reference(*args, **kwargs)
        ref_seconds.append(time.perf_counter() - began)
        return out

    task_module.reference_logps = timed_reference
    # The pre-training estimate times ~6 steps of its own (minutes here): outside the timed window
    # anyway, it is left out to keep the bench short; the first step is left out of every config's window.
    task_module.estimate_training = lambda *a, **k: None
    task_module.print_estimate = lambda *a, **k: None
    prepare = PrepareSpec(clean=False, pii="off", dedup=False, near_dedup=False)
    spec = RunSpec(
        name="bench",
        model=ModelSpec(name=model_path(), dtype="float32", device="cpu"),
        data=DataSpec(path=folder / "pairs.jsonl", split_ratios=(1.0, 0.0, 0.0), prepare=prepare),
        train=TrainSpec(task="preference", method=method, epochs=1, lr=LR[method], batch_size=BATCH, max_seq_len=MAX_LEN, warmup_ratio=0.0, seed=SEED),
    )
    started = time.perf_counter()
    result = train(spec, Workspace.from_env())
    steps = [r for r in result.history if "loss" in r]
    return {
        "steps": len(steps),
        **clock.figures(),
        "ref_seconds": round(sum(ref_seconds), 2),
        "total_seconds": round(time.perf_counter() - started, 2),
        "first_loss": steps[0]["loss"],
    }


def worker(name: str, folder: Path, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    torch.set_num_threads = lambda n: None  # every config gets the same thread count
    os.environ["TUNESMITH_HOME"] = str(folder / f"home-{name}")
    result = run_tunesmith(name, folder) if name.startswith("tunesmith") else run_trl(name, folder)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    result["threads"] = threads
    result["cpu_seconds_total"] = round(cpu_seconds(), 1)
    (folder / f"{name}.json").write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "dpo_bench.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.folder, args.threads)
        return
    folder = args.folder or Path(tempfile.mkdtemp(prefix="dpo-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    pairs_file = folder / "pairs.jsonl"
    if not pairs_file.exists():
        pairs_file.write_text("".join(json.dumps(p) + "\n" for p in make_pairs(args.pairs, SEED)), encoding="utf-8")
    model_path()  # converted once, outside every timed process
    results = {}
    for name in args.configs.split(","):
        done = folder / f"{name}.json"
        if not done.exists():
            command = [sys.executable, __file__, "--worker", name, "--folder", str(folder), "--threads", str(args.threads)]
            process = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(HERE.parent / "src")})
            if process.returncode != 0:
                print(f"{name} failed:\n{process.stderr[-3000:]}", file=sys.stderr)
                continue
        results[name] = json.loads(done.read_text())
        print(name, results[name], file=sys.stderr, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"pairs": args.pairs, "threads": args.threads, "folder": str(folder), "results": results}, indent=2))
    print("| config | real tokens/s (steps) | real tokens per CPU-s | timed steps | reference pass s | TRL setup s | whole training call s | peak RSS (MB) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        rate, per_cpu = r["real_tokens"] / max(r["train_seconds"], 1e-9), r["real_tokens"] / max(r["train_cpu_seconds"], 1e-9)
        cells = [
            f"{rate:.1f}",
            f"{per_cpu:.1f}",
            r["timed_steps"],
            r.get("ref_seconds") or "-",
            r.get("setup_seconds") or "-",
            r["total_seconds"],
            f"{r['peak_rss_mb']:,}",
        ]
        print(f"| {name} | " + " | ".join(map(str, cells)) + " |")


if __name__ == "__main__":
    main()
