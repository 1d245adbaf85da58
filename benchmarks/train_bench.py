"""Training speed and memory against the usual ways of fine-tuning, on the same data.

    python benchmarks/train_bench.py            # 16 examples (2 steps), every config (~30 min on 2 busy cores)
    python benchmarks/train_bench.py --quick    # 8 examples (1 step)
    python benchmarks/train_bench.py --examples 32 --threads 2 --rounds 3 --configs hf_padded,trl_packed,tunesmith   # the README figures
    python benchmarks/train_bench.py --device cuda --dtype bfloat16 --batch 64 [--model FOLDER] [--liger]   # on a GPU
    python benchmarks/train_bench.py --device cuda --dtype bfloat16 --model /tmp/llama-1b --method full --lengths 512-4096
    bash benchmarks/gpu_run.sh 1; bash benchmarks/gpu_run.sh 2   # the same on the device machine (see benchmarks/README.md)

LoRA r16 (alpha 32, no dropout) on every linear layer of the embedded SmolLM2-135M-Instruct,
fp32, one epoch, batch 8, AdamW lr 1e-3 with linear decay and no warm-up, gradient clipping 1.0,
seed 0, on the same variable-length chats (demo tickets chained into conversations of 64-512
tokens), with the same tokens and the same assistant-only labels for every config:

  hf_padded     transformers Trainer + PEFT, DataCollatorForSeq2Seq padding to the longest
  trl_default   TRL SFTTrainer with its defaults (gradient checkpointing on), but fp32 (its bf16
                default runs ~100x slower on CPUs without native bf16)
  trl_padfree   TRL SFTTrainer, padding_free=True, no gradient checkpointing
  trl_packed    TRL SFTTrainer, packing (bfd, rows of 512, 4 rows a step), no gradient checkpointing
  tunesmith     tunesmith's trainer (train.packing auto)

Each config runs in its own process, so its peak RSS is its own. Throughput is real (non-pad)
tokens per second of training steps (model loading and data preparation excluded), per
second of wall time and per second of CPU time (all threads; steadier on a shared machine). The
held-out loss is the same token-weighted assistant loss on the same 8 unseen chats for all.

MFU: model FLOPs per real token (model_flops_per_token): 4N with LoRA, 6N for full fine-tuning,
N = the weights of every linear layer, the output head counted only at trained positions (the
loss needs no other logits), plus attention's 6·s·d per layer at the data's lengths. (Tables
before 2026-12-06 counted the head at every token, as SmolLM2-135M's 134.5M weights, and no
attention.) Divided by this
machine's matmul rate in the run's dtype on its device, measured in the same run (best of several
square torch.matmul of 1024 and 2048, and 4096 on a GPU, before and after the configs).

At the scale users train (issue 22), on a GPU: `random_model.py --shape llama-1b|llama-8b` makes
the model, `--method full`, `--lengths 512-4096` and `--gradient-checkpointing` set the rest, and
benchmarks/gpu_scale.sh runs the whole comparison in one device call.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIGS = ["hf_padded", "trl_default", "trl_padfree", "trl_packed", "tunesmith", "tunesmith_nproc2"]
LR, SEED = 1e-3, 0
FULL_LR = 1e-5  # full fine-tuning of every weight: LoRA's 1e-3 would diverge, and a NaN stops tunesmith's run


def matmul_gflops(threads: int, size: int = 2048, repeats: int = 8, device: str = "cpu", dtype: str = "float32") -> tuple[float, float]:
    """(GFLOP per wall second, GFLOP per CPU second) of matmul in the run's dtype on its device, best of several."""
    import torch

    torch.set_num_threads(threads)
    kind = getattr(torch, dtype)
    a, b = torch.randn(size, size, device=device, dtype=kind), torch.randn(size, size, device=device, dtype=kind)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    torch.matmul(a, b)
    sync()
    best_wall, cpu_start = float("inf"), cpu_seconds()
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        sync()
        best_wall = min(best_wall, time.perf_counter() - start)
    # CPU time over all repeats: one product is too short for getrusage's resolution.
    cpu_each = max(1e-6, cpu_seconds() - cpu_start) / repeats
    return 2 * size**3 / best_wall / 1e9, 2 * size**3 / cpu_each / 1e9


def make_chats(n: int, seed: int, tokenizer, lengths: tuple[int, int] = (64, 512)) -> list[dict]:
    """Conversations of one or more ticket exchanges, each grown towards a length drawn from `lengths` tokens."""
    from tunesmith.demo.tickets import generate

    rng = random.Random(seed)
    pool = generate(n * max(12, lengths[1] // 40), seed)  # an exchange is 60-150 tokens: enough for the longest chats
    chats, cursor = [], 0
    for _ in range(n):
        target = rng.randint(*lengths)
        messages = list(pool[cursor]["messages"])
        cursor += 1
        while True:
            extra = pool[cursor]["messages"][1:]
            longer = messages + extra
            text = tokenizer.apply_chat_template(longer, tokenize=False)
            if cursor + 1 >= len(pool) or len(tokenizer(text, add_special_tokens=False)["input_ids"]) > target:
                break
            messages, cursor = longer, cursor + 1
        chats.append({"messages": messages})
    return chats


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def encoded(folder: Path, name: str, tokenizer, max_len: int):
    from tunesmith.chat_template import encode_all
    from tunesmith.data.example import Example, Message

    records = [json.loads(line) for line in (folder / f"{name}.jsonl").read_text().splitlines()]
    examples = [Example(id=f"{name}-{i}", messages=[Message(**m) for m in r["messages"]]) for i, r in enumerate(records)]
    items, dropped = encode_all(tokenizer, examples, max_len, "assistant")
    assert not dropped
    return items


# ---------------------------------------------------------------- workers (one config per process)


def lora_config():
    from peft import LoraConfig

    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class StepClock:
    """Wall and CPU time and real tokens from the start of step `warmup + 1` (the end of step
    `warmup`) to the end of the last step, the same window for every trainer. CPU time (all threads)
    is what other work on a shared machine disturbs least. On a GPU the first steps load kernels and
    tune libraries, so its runs leave a few out; every step ends with the device synchronised."""

    def __init__(self, warmup: int = 0):
        self.warmup = warmup
        self.start: tuple[float, float] | None = None
        self.ends: list[tuple[float, float, int]] = []  # (wall, cpu, real tokens of the step)
        self.pending_tokens = 0

    def begin(self) -> None:
        if self.start is None:
            self.start = (time.perf_counter(), cpu_seconds())

    def count(self, tokens: int) -> None:
        self.pending_tokens += tokens

    def finish(self) -> None:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
        self.ends.append((time.perf_counter(), cpu_seconds(), self.pending_tokens))
        self.pending_tokens = 0

    def figures(self) -> dict:
        if len(self.ends) <= self.warmup:
            raise SystemExit(f"only {len(self.ends)} steps: too few to leave out {self.warmup} warm-up steps (use more --examples)")
        wall0, cpu0 = self.start if self.warmup == 0 else self.ends[self.warmup - 1][:2]
        wall1, cpu1, _ = self.ends[-1]
        return {
            "real_tokens": sum(tokens for _, _, tokens in self.ends[self.warmup :]),
            "timed_steps": len(self.ends) - self.warmup,
            "train_seconds": round(wall1 - wall0, 3),
            "train_cpu_seconds": round(cpu1 - cpu0, 2),
        }

    def callback(self):
        from transformers import TrainerCallback

        clock = self

        class _Clock(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                clock.begin()

            def on_step_end(self, args, state, control, **kwargs):
                clock.finish()

        return _Clock()

    def count_inputs(self, trainer) -> None:
        """Count each micro-batch's real tokens as the trainer receives it: the attention mask's ones
        where there is padding, every position of the flat rows of padding-free and packed batches."""
        step = trainer.training_step

        def counted(model, inputs, *args, **kwargs):
            mask = inputs.get("attention_mask")
            self.count(int(mask.sum()) if mask is not None else inputs["input_ids"].numel())
            return step(model, inputs, *args, **kwargs)

        trainer.training_step = counted


class Hardware:
    """Where and how every config runs: the CPU in fp32 by default; on a GPU, bf16 with a chosen
    attention kernel and, if asked, Liger's kernels for the HF and TRL configs. Also the batch size
    (a GPU needs bigger batches to be busy), the steps left out of the timing, the model, the
    method (LoRA or every weight), the chats' token lengths, gradient checkpointing (every config
    alike) and tunesmith's forward-pass size."""

    def __init__(
        self,
        device="cpu",
        dtype="float32",
        attn="sdpa",
        liger=False,
        batch=8,
        warmup=0,
        model=None,
        method="lora",
        lengths=(64, 512),
        grad_ckpt=False,
        tokens_per_forward=None,
        profile_steps=0,
    ):
        self.device, self.dtype, self.attn, self.liger = device, dtype, attn, liger
        self.batch, self.warmup, self.model = batch, warmup, model
        self.method, self.lengths, self.grad_ckpt, self.tokens_per_forward = method, lengths, grad_ckpt, tokens_per_forward
        self.profile_steps = profile_steps

    @property
    def max_len(self) -> int:
        return self.lengths[1]

    @property
    def lr(self) -> float:
        return LR if self.method == "lora" else FULL_LR

    def argv(self) -> list[str]:
        return [
            "--device",
            self.device,
            "--dtype",
            self.dtype,
            "--attn",
            self.attn,
            *(["--liger"] if self.liger else []),
            "--batch",
            str(self.batch),
            "--warmup-steps",
            str(self.warmup),
            *(["--model", self.model] if self.model else []),
            "--method",
            self.method,
            "--lengths",
            f"{self.lengths[0]}-{self.lengths[1]}",
            *(["--gradient-checkpointing"] if self.grad_ckpt else []),
            *(["--tokens-per-forward", str(self.tokens_per_forward)] if self.tokens_per_forward else []),
            *(["--profile-steps", str(self.profile_steps)] if self.profile_steps else []),
        ]

    def model_path(self) -> str:
        from tunesmith.models.loading import resolve_model_path

        return self.model or resolve_model_path("smollm2-135m-instruct")

    def trainer_args(self) -> dict:
        return {"use_cpu": self.device == "cpu", "bf16": self.dtype == "bfloat16", "fp16": self.dtype == "float16", "use_liger_kernel": self.liger}

    def peak_memory_mb(self) -> int | None:
        import torch

        return round(torch.cuda.max_memory_allocated() / 2**20) if self.device == "cuda" else None


def run_hf_trainer(name: str, folder: Path, model_path: str, hw: Hardware) -> dict:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from tunesmith.train.tasks.causal_lm import evaluate_loss

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    train_items, val_items = encoded(folder, "train", tokenizer, hw.max_len), encoded(folder, "val", tokenizer, hw.max_len)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, hw.dtype), attn_implementation=hw.attn).to(hw.device)
    torch.manual_seed(SEED)
    common = dict(
        output_dir=str(folder / name),
        per_device_train_batch_size=hw.batch,
        num_train_epochs=1,
        learning_rate=hw.lr,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=SEED,
        disable_tqdm=True,
        **hw.trainer_args(),
    )
    if hw.grad_ckpt:
        common.update(gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False})
    clock = StepClock(hw.warmup)
    if name == "hf_padded":
        from peft import get_peft_model

        if hw.method == "lora":
            model = get_peft_model(model, lora_config())
        rows = [{"input_ids": i.input_ids, "labels": i.labels} for i in train_items]
        trainer = Trainer(
            model=model,
            args=TrainingArguments(**common),
            train_dataset=datasets.Dataset.from_list(rows),
            data_collator=DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100),
            callbacks=[clock.callback()],
        )
    else:
        from trl import SFTConfig, SFTTrainer

        # TRL's own choices, except that --gradient-checkpointing sets it for every config alike.
        checkpointing = {"gradient_checkpointing": hw.grad_ckpt}
        options = {
            "trl_default": {},
            "trl_padfree": {"padding_free": True, "max_length": None, **checkpointing},
            "trl_packed": {"packing": True, "max_length": hw.max_len, **checkpointing, "per_device_train_batch_size": max(1, hw.batch // 2)},
        }[name]
        rows = [{"input_ids": i.input_ids, "assistant_masks": [int(label != -100) for label in i.labels]} for i in train_items]
        trainer = SFTTrainer(
            model=model,
            args=SFTConfig(**{**common, **options}),
            train_dataset=datasets.Dataset.from_list(rows),
            processing_class=tokenizer,
            peft_config=lora_config() if hw.method == "lora" else None,
            callbacks=[clock.callback()],
        )
    clock.count_inputs(trainer)
    trainer.train()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return {
        "steps": trainer.state.global_step,
        **clock.figures(),
        "heldout_loss": evaluate_loss(trainer.model, val_items, pad_id, torch.device(hw.device), hw.batch),
    }


class StepProfiler:
    """torch.profiler over `steps` optimiser steps right after the warm-up, written as a table of
    kernel (on a CPU, operator) time by op: where a speed target is missed, this says where the time
    went. Profiled steps run slower: the clock leaves them out, with the warm-up."""

    def __init__(self, path: Path, warmup: int, steps: int):
        self.path, self.first, self.last = path, warmup + 1, warmup + steps
        self.step, self.active = 0, None

    def before_step(self) -> None:
        self.step += 1
        if self.step == self.first and self.last >= self.first:
            import torch
            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
            self.active = profile(activities=activities)
            self.active.__enter__()

    def after_step(self) -> None:
        if self.active is not None and self.step == self.last:
            self.close()

    def close(self) -> None:
        """Stop and write the table: after the last profiled step, or at the run's end if it had fewer
        steps (a profiler left running makes the process fail as it exits)."""
        if self.active is None:
            return
        import torch

        self.active.__exit__(None, None, None)
        key = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
        table = self.active.key_averages().table(sort_by=key, row_limit=30, max_name_column_width=60)
        self.path.write_text(f"steps {self.first}-{min(self.step, self.last)}, sorted by {key}\n{table}\n", encoding="utf-8")
        self.active = None


def run_tunesmith(folder: Path, model_path: str, hw: Hardware) -> dict:
    from tunesmith.train import loop as loop_module
    from tunesmith.train.recipe import train
    from tunesmith.workspace import Workspace

    # The same window as the HF callback: around every optimiser step. Profiled steps (slower) come right
    # after the warm-up and are left out of the timing with it.
    clock, step = StepClock(hw.warmup + hw.profile_steps), loop_module.optimizer_step
    profiler = StepProfiler(folder / "tunesmith.profile.txt", hw.warmup, hw.profile_steps)

    def timed_step(*args, **kwargs):
        clock.begin()
        profiler.before_step()
        out = step(*args, **kwargs)
        clock.count(out[3])  # (loss, grad norm, trained tokens, real tokens)
        clock.finish()
        profiler.after_step()
        return out

    loop_module.optimizer_step = timed_step

    result = train(tunesmith_spec(folder, model_path, hw), Workspace.from_env())
    profiler.close()
    steps = [r for r in result.history if "loss" in r]
    return {"steps": len(steps), **clock.figures(), "heldout_loss": result.info.best_val_loss}


def tunesmith_spec(folder: Path, model_path: str, hw: Hardware):
    from tunesmith.config import DataSpec, ModelSpec, PrepareSpec, RunSpec, TrainSpec

    prepare = PrepareSpec(clean=False, pii="off", dedup=False, near_dedup=False, validation_file=folder / "val.jsonl", test_file=folder / "val.jsonl")
    return RunSpec(
        name="bench",
        model=ModelSpec(name=model_path, dtype=hw.dtype, device=hw.device),
        # No replay of the base's general answers (on by default since 2026-12-05): the peers train on the
        # bench's chats alone, and so must tunesmith for the tokens and steps to be the same.
        data=DataSpec(path=folder / "train.jsonl", split_ratios=(1.0, 0.0, 0.0), prepare=prepare, keep_general=None),
        train=TrainSpec(
            method=hw.method,
            epochs=1,
            lr=hw.lr,
            batch_size=hw.batch,
            max_seq_len=hw.max_len,
            warmup_ratio=0.0,
            seed=SEED,
            gradient_checkpointing=hw.grad_ckpt,
            tokens_per_forward=hw.tokens_per_forward,
        ),
    )


def run_tunesmith_processes(folder: Path, model_path: str, hw: Hardware, nproc: int, threads: int, home: Path) -> dict:
    """`tunesmith train --nproc N`, each process with threads/N threads: on a small CPU, whole
    processes use the cores better than one process's threads split every small operation.
    Throughput comes from the run's metrics.jsonl (steps 2..n: from the end of step 1 to the end
    of the last, as no hook reaches into the child processes); peak RSS is the peak of the sum
    over the process tree, sampled every 0.1 s."""
    import psutil

    from tunesmith.config import spec_to_yaml

    config = folder / f"nproc{nproc}.yaml"
    config.write_text(spec_to_yaml(tunesmith_spec(folder, model_path, hw)), encoding="utf-8")
    env = {**os.environ, "TUNESMITH_HOME": str(home), "OMP_NUM_THREADS": str(max(1, threads // nproc))}
    command = [sys.executable, "-m", "tunesmith", "train", "--config", str(config), "--nproc", str(nproc)]
    process = psutil.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    while process.poll() is None:
        try:
            tree = [process, *process.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.1)
    out, err = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"tunesmith --nproc {nproc} failed:\n{err[-3000:]}")
    run_dir = home / "runs" / out.strip().splitlines()[-1]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    validations = [r for r in records if "val_loss" in r]
    window = steps[-1]["elapsed_s"] - steps[0]["elapsed_s"]
    return {
        "steps": len(steps),
        "real_tokens": sum(r["tokens"] for r in steps[1:]),
        "train_seconds": window,
        "train_cpu_seconds": None,
        "heldout_loss": validations[-1]["val_loss"],
        "peak_rss_mb": round(peak / 2**20),
        "processes": nproc,
        "timing": "steps 2..n from metrics.jsonl",
    }


def result_file(folder: Path, name: str, round_index: int) -> Path:
    return folder / (f"{name}.json" if round_index == 0 else f"{name}.round{round_index}.json")


def worker(name: str, folder: Path, threads: int, hw: Hardware, round_index: int) -> None:
    import torch

    torch.set_num_threads(threads)
    # Every trainer gets the same thread count; tunesmith's loader would otherwise raise it to all cores.
    torch.set_num_threads = lambda n: None
    model_path = hw.model_path()
    suffix = f"-round{round_index}" if round_index else ""  # each round trains into a tunesmith home of its own
    if name.startswith("tunesmith_nproc"):
        nproc = int(name.removeprefix("tunesmith_nproc"))
        result = run_tunesmith_processes(folder, model_path, hw, nproc, threads, folder / f"tunesmith-home-nproc{nproc}{suffix}")
    else:
        os.environ["TUNESMITH_HOME"] = str(folder / f"tunesmith-home{suffix}")
        result = run_tunesmith(folder, model_path, hw) if name == "tunesmith" else run_hf_trainer(name, folder, model_path, hw)
        result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    result["peak_gpu_mb"] = hw.peak_memory_mb()
    result["threads"] = torch.get_num_threads()
    result_file(folder, name, round_index).write_text(json.dumps(result))


# ---------------------------------------------------------------- driver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="8 training examples (one step) instead of 16")
    parser.add_argument("--examples", type=int, default=None)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="torch threads per config (1 makes CPU time a steady measure on a busy machine)"
    )
    parser.add_argument("--out", type=Path, default=HERE / "results" / "train_bench.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help="reuse this run folder: its data, and the configs already measured there")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32", help="bfloat16 on GPUs; on CPUs only with native bf16")
    parser.add_argument("--attn", default="sdpa", help="attention kernel for the HF and TRL configs: sdpa, eager, flash_attention_2")
    parser.add_argument("--liger", action="store_true", help="Liger kernels for the HF and TRL configs (needs liger-kernel and a GPU)")
    parser.add_argument("--batch", type=int, default=8, help="examples per optimiser step (8 on the CPU; a GPU needs more to be busy)")
    parser.add_argument("--warmup-steps", type=int, default=None, help="steps left out of the timing (default 0 on CPUs, 3 on GPUs)")
    parser.add_argument("--model", help="a transformers model folder of the same architecture (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every config this many times, interleaved, and report each config's median round (ratios: median of the per-round ratios)",
    )
    parser.add_argument("--round", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--method", choices=["lora", "full"], default="lora", help="LoRA r16 on every linear layer, or every weight (lr 1e-5)")
    parser.add_argument("--lengths", default="64-512", help="MIN-MAX: each chat grows towards a length drawn from this range of tokens")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="on for every config (TRL's default config has it on anyway)")
    parser.add_argument("--tokens-per-forward", type=int, help="tunesmith: split each batch into forward passes of at most this many tokens")
    parser.add_argument(
        "--profile-steps", type=int, default=0, help="tunesmith: profile this many steps after the warm-up (kernel time by op, tunesmith.profile.txt)"
    )
    args = parser.parse_args()
    warmup = args.warmup_steps if args.warmup_steps is not None else (3 if args.device == "cuda" else 0)
    low, high = (int(x) for x in args.lengths.split("-"))
    hw = Hardware(
        args.device,
        args.dtype,
        args.attn,
        args.liger,
        args.batch,
        warmup,
        args.model,
        args.method,
        (low, high),
        args.gradient_checkpointing,
        args.tokens_per_forward,
        args.profile_steps,
    )
    if args.worker:
        worker(args.worker, args.folder, args.threads, hw, args.round)
        return
    n = args.examples or (8 if args.quick else 16)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hw.model_path())
    folder = args.folder or Path(tempfile.mkdtemp(prefix="train-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "train.jsonl").is_file():
        write_jsonl(folder / "train.jsonl", make_chats(n, SEED, tokenizer, hw.lengths))
        write_jsonl(folder / "val.jsonl", make_chats(8, SEED + 1, tokenizer, hw.lengths))
    print(f"data and per-config results in {folder}", flush=True)
    train_items = encoded(folder, "train", tokenizer, hw.max_len)
    lengths = [len(i.input_ids) for i in train_items]
    n = len(lengths)
    flops = model_flops_per_token(hw.model_path(), train_items, hw.method)
    rounds = [run_round(folder, args.configs.split(","), args.threads, hw, r, flops) for r in range(args.rounds)]
    results = summarise(rounds)
    payload = {
        "command": " ".join(["python", "benchmarks/train_bench.py", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg_at_end": os.getloadavg()},
        "threads": args.threads,
        "rounds": args.rounds,
        f"matmul_{hw.dtype}_gflops_per_round_wall_then_per_cpu_s": [r["gflops"] for r in rounds],
        "data": {
            "train_examples": n,
            "heldout_examples": 8,
            "tokens_min": min(lengths),
            "tokens_max": max(lengths),
            "tokens_mean": round(sum(lengths) / len(lengths), 1),
            "real_tokens": sum(lengths),
        },
        "model_flops_per_real_token": flops,
        "settings": {
            "method": "LoRA r16 alpha32 all-linear" if hw.method == "lora" else "full fine-tuning",
            "gradient_checkpointing": hw.grad_ckpt,
            "tunesmith_tokens_per_forward": hw.tokens_per_forward,
            "device": hw.device,
            "dtype": hw.dtype,
            "attention (HF, TRL)": hw.attn,
            "liger (HF, TRL)": hw.liger,
            "batch": hw.batch,
            "warmup_steps_left_out_of_timing": hw.warmup,
            "model": hw.model or "embedded SmolLM2-135M-Instruct",
            "epochs": 1,
            "lr": hw.lr,
            "lengths": list(hw.lengths),
        },
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(table(payload))


def run_round(folder: Path, configs: list[str], threads: int, hw: Hardware, round_index: int, flops: dict) -> dict:
    """Every config once, each in its own process, between two matmul probes; figures against this round's probes."""
    gflops = probe_gflops(threads, hw)
    results = {}
    for name in configs:
        path = result_file(folder, name, round_index)
        if path.is_file():
            results[name] = json.loads(path.read_text())
            continue
        command = [sys.executable, __file__, "--worker", name, "--folder", str(folder), "--threads", str(threads), "--round", str(round_index), *hw.argv()]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            path.unlink(missing_ok=True)  # a worker that wrote its figures and then failed must not be reused as measured
            print(f"{name} failed (exit {done.returncode}):\n{done.stderr[-3000:]}", file=sys.stderr, flush=True)
            continue
        results[name] = json.loads(path.read_text())
        results[name]["process_seconds"] = round(time.perf_counter() - started, 1)
        layout = [line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip().startswith("batches ")]
        if layout:
            results[name]["layout"] = layout[0]
        path.write_text(json.dumps(results[name]))
        print(f"round {round_index + 1}", name, results[name], flush=True)
    gflops += probe_gflops(threads, hw)
    peak_wall, peak_cpu = max(g[0] for g in gflops) * 1e9, max(g[1] for g in gflops) * 1e9
    for r in results.values():
        r["tokens_per_s"] = round(r["real_tokens"] / r["train_seconds"], 1)
        r["tokens_per_cpu_s"] = round(r["real_tokens"] / r["train_cpu_seconds"], 1) if r["train_cpu_seconds"] else None
        r["mfu"] = round(flops["total"] * r["tokens_per_s"] / peak_wall, 4)
        r["mfu_cpu_time"] = round(flops["total"] * r["tokens_per_cpu_s"] / peak_cpu, 4) if r["tokens_per_cpu_s"] else None
    base = results.get("hf_padded")
    for r in results.values():
        if base:
            r["speed_vs_hf_padded"] = round(r["tokens_per_s"] / base["tokens_per_s"], 2)
            r["cpu_speed_vs_hf_padded"] = round(r["tokens_per_cpu_s"] / base["tokens_per_cpu_s"], 2) if r["tokens_per_cpu_s"] else None
            r["rss_vs_hf_padded"] = round(r["peak_rss_mb"] / base["peak_rss_mb"], 2)
            if r.get("peak_gpu_mb") and base.get("peak_gpu_mb"):
                r["gpu_memory_vs_hf_padded"] = round(r["peak_gpu_mb"] / base["peak_gpu_mb"], 2)
    return {"gflops": [[round(g, 1) for g in pair] for pair in gflops], "results": results}


def model_flops_per_token(model_path: str, items: list, method: str) -> dict:
    """Model FLOPs per real token, the work the task needs whichever trainer does it (recomputation by
    gradient checkpointing is not counted: it is the price of memory, not work the model needs).
    N = the weights of every linear layer (the input embedding is a lookup). Forward 2N; backward 2N
    for the activations' gradients plus, in full fine-tuning, 2N for the weights' (LoRA's frozen
    weights get none; its own FLOPs, under 1%, are left out). The output head counts only at the
    positions whose next token is trained: the loss needs no logits elsewhere (tunesmith computes
    none there; HF and TRL compute them all and get no credit for it). Attention scores and their
    use cost 2·s·d per token per layer forward under a causal mask (s the example's length,
    d = heads x head_dim), three times that with the backward pass, whichever weights learn."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    head = model.get_output_embeddings().weight.numel()
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    lengths = [len(item.input_ids) for item in items]
    trained_share = sum(sum(label != -100 for label in item.labels) for item in items) / sum(lengths)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    width, layers = config.num_attention_heads * head_dim, config.num_hidden_layers
    weights = (6 if method == "full" else 4) * (linear - head + head * trained_share)
    attention = 3 * 2 * width * layers * sum(s * s for s in lengths) / sum(lengths)
    return {
        "linear_weights": linear,
        "head_weights": head,
        "trained_share": round(trained_share, 4),
        "weights": round(weights),
        "attention": round(attention),
        "total": round(weights + attention),
    }


def probe_gflops(threads: int, hw: Hardware) -> list[tuple[float, float]]:
    return [matmul_gflops(threads, size, device=hw.device, dtype=hw.dtype) for size in (1024, 2048, 4096 if hw.device == "cuda" else 2048)]


def summarise(rounds: list[dict]) -> dict:
    """Each config's median round (by real tokens/s), with every round's throughput, MFU and ratio beside it;
    the ratio to HF padded is the median of the per-round ratios, each taken between runs minutes apart."""
    summary = {}
    for name in rounds[0]["results"]:
        runs = sorted((r["results"][name] for r in rounds if name in r["results"]), key=lambda run: run["tokens_per_s"])
        median = dict(runs[(len(runs) - 1) // 2])
        if len(runs) > 1:
            ordered = [r["results"][name] for r in rounds if name in r["results"]]
            for key in ("tokens_per_s", "mfu", "speed_vs_hf_padded", "rss_vs_hf_padded"):
                values = [run.get(key) for run in ordered]
                median[f"{key}_rounds"] = values
                if key in ("speed_vs_hf_padded", "rss_vs_hf_padded", "mfu") and None not in values:
                    median[key] = sorted(values)[(len(values) - 1) // 2]
        summary[name] = median
    return summary


def table(payload: dict) -> str:
    lines = [
        "| config | steps | real tokens/s (wall) | vs HF padded | MFU (wall) | real tokens per CPU-s | vs HF (CPU) | MFU (CPU time) | peak RSS (MB) | RSS vs HF | held-out loss |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def show(value, form="{}"):
        return "–" if value is None else form.format(value)

    gpu = any(r.get("peak_gpu_mb") for r in payload["results"].values())
    if gpu:
        lines = [line + (" peak GPU memory (MB) |" if i == 0 else " --- |") for i, line in enumerate(lines)]
    for name, r in payload["results"].items():
        lines.append(
            f"| {name} | {r['steps']} | {r['tokens_per_s']} | {show(r.get('speed_vs_hf_padded'), '{}x')} | {r['mfu']:.1%} | "
            f"{show(r['tokens_per_cpu_s'])} | {show(r.get('cpu_speed_vs_hf_padded'), '{}x')} | {show(r['mfu_cpu_time'], '{:.1%}')} | "
            f"{r['peak_rss_mb']} | {show(r.get('rss_vs_hf_padded'), '{}x')} | {r['heldout_loss']} |" + (f" {r.get('peak_gpu_mb')} |" if gpu else "")
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
