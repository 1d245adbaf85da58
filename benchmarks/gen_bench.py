"""Evaluation generation speed: `generate_batched` (length-sorted, left-padded batches) against plain
one-at-a-time `model.generate` on the same prompts, with the embedded SmolLM2-135M-Instruct, greedy.

    python benchmarks/gen_bench.py --examples 32 --max-new-tokens 32 --batch-size 16

Prints a markdown row and writes benchmarks/results/gen_bench.json."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from tunesmith.chat_template import end_of_turn_ids, render_prompt
from tunesmith.config import ModelSpec
from tunesmith.data.example import Example
from tunesmith.demo.tickets import generate as demo_tickets
from tunesmith.models.generate import generate_batched
from tunesmith.models.loading import load_model


@torch.no_grad()
def one_by_one(model, tokenizer, examples: list[Example], eot: list[int], max_new_tokens: int) -> tuple[list[str], float]:
    outputs = []
    started = time.perf_counter()
    for example in examples:
        encoded = tokenizer(render_prompt(tokenizer, example), return_tensors="pt", add_special_tokens=False)
        generated = model.generate(
            **encoded, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eot, pad_token_id=eot[0], temperature=None, top_p=None, top_k=None
        )
        outputs.append(tokenizer.decode(generated[0, encoded["input_ids"].shape[1] :], skip_special_tokens=True).strip())
    return outputs, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    started = time.perf_counter()
    model, tokenizer, _ = load_model(ModelSpec())
    print(f"model loaded in {time.perf_counter() - started:.1f} s", flush=True)
    records = demo_tickets(args.examples, seed=3)
    examples = [Example(id=str(i), messages=r["messages"][:-1]) for i, r in enumerate(records)]
    eot = end_of_turn_ids(tokenizer)
    load_before = os.getloadavg()[0]
    batched, batched_s = generate_batched(model, tokenizer, examples, eot, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    print(f"batched: {batched_s:.1f} s", flush=True)
    single, single_s = one_by_one(model, tokenizer, examples, eot, args.max_new_tokens)
    print(f"one by one: {single_s:.1f} s", flush=True)
    result = {
        "examples": args.examples,
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "batched_seconds": round(batched_s, 2),
        "batched_examples_per_s": round(args.examples / batched_s, 3),
        "one_by_one_seconds": round(single_s, 2),
        "one_by_one_examples_per_s": round(args.examples / single_s, 3),
        "speedup": round(single_s / batched_s, 2),
        "same_output_share": round(sum(a == b for a, b in zip(batched, single)) / len(single), 3),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "load_average_before": round(load_before, 2),
        "load_average_after": round(os.getloadavg()[0], 2),
    }
    out = Path(__file__).parent / "results" / "gen_bench.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("| examples | max new tokens | batch | batched ex/s | one-by-one ex/s | speedup | same output |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print(
        f"| {args.examples} | {args.max_new_tokens} | {args.batch_size} | {result['batched_examples_per_s']} | "
        f"{result['one_by_one_examples_per_s']} | {result['speedup']}x | {result['same_output_share']:.0%} |"
    )


if __name__ == "__main__":
    main()
