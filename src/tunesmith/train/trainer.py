"""`tunesmith train`: load → check → train with validation every epoch → keep the best → save."""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tunesmith.config import RunSpec
from tunesmith.data.dataset import Dataset, load_dataset, prepare_dataset
from tunesmith.errors import UserError
from tunesmith.models.loading import load_model, resolve_model_path
from tunesmith.registry.store import Registry
from tunesmith.runfolder import RunInfo, new_run_id, replace_folder, save_run_info, write_config, write_json
from tunesmith.train.collate import Encoded, batch_tensors, choose_packing, collate, encode_all, end_of_turn_ids, make_batches, tokens_per_forward
from tunesmith.train import distributed
from tunesmith.train.loss import summed_loss
from tunesmith.train.methods import apply_method, count_parameters
from tunesmith.train.plot import plot_loss
from tunesmith.ui import console, progress
from tunesmith.workspace import Workspace


@dataclass
class TrainResult:
    run_dir: Path
    info: RunInfo
    history: list[dict[str, Any]] = field(default_factory=list)


def resolve_dataset(spec: RunSpec, workspace: Workspace) -> Dataset:
    if spec.data.path is not None:
        return prepare_dataset(spec.data.path, workspace, fmt=spec.data.format, seed=spec.data.seed, ratios=spec.data.split_ratios, options=spec.data.prepare)
    return load_dataset(workspace, spec.data.dataset or "")


def train(spec: RunSpec, workspace: Workspace) -> TrainResult:
    distributed.init_from_env(spec.model.device)
    if not distributed.is_main():
        return _train_as_worker(spec, workspace)
    dataset = resolve_dataset(spec, workspace)
    base_path = resolve_model_path(spec.model.name)
    distributed.share_from_main(dataset.name)
    run_id = new_run_id(spec.name or dataset.name)
    run_dir = workspace.run_dir(run_id)
    run_dir.mkdir(parents=True)
    write_config(run_dir, spec)
    write_json(run_dir / "dataset.json", dataset.manifest.model_dump(mode="json"))
    registry = Registry(workspace.registry_db)
    registry.start_run(run_id, spec.name, spec.model.name, spec.train.method, dataset.name, dataset.version, run_dir)
    try:
        result = _train_in_folder(spec, dataset, run_dir, base_path)
    except BaseException:
        registry.finish_run(run_id, "failed", None)
        raise
    registry.finish_run(run_id, "completed", result.info.best_val_loss)
    return result


def _train_as_worker(spec: RunSpec, workspace: Workspace) -> TrainResult:
    """Another process of a data-parallel run: the same training; process 0 keeps the run folder."""
    dataset = load_dataset(workspace, distributed.share_from_main(None))
    console.quiet = True
    run_dir = distributed.worker_folder()
    try:
        return _train_in_folder(spec, dataset, run_dir, resolve_model_path(spec.model.name))
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def _train_in_folder(spec: RunSpec, dataset: Dataset, run_dir: Path, base_path: str) -> TrainResult:
    model, tokenizer, device = load_model(spec.model, base_path)
    cfg = spec.train
    train_items, dropped = encode_all(tokenizer, dataset.splits["train"], cfg.max_seq_len, cfg.train_on)
    val_items, _ = encode_all(tokenizer, dataset.splits["validation"], cfg.max_seq_len, cfg.train_on)
    if not train_items:
        raise UserError("no training example has a token left to learn", fix=f"raise train.max_seq_len (now {cfg.max_seq_len}) or check the assistant turns")
    if dropped:
        console.print(f"[yellow]dropped {len(dropped)} example(s) with nothing to learn after truncation to {cfg.max_seq_len} tokens")
    eot_ids = end_of_turn_ids(tokenizer)
    torch.manual_seed(cfg.seed)  # right before the adapters are initialised, so the same seed gives the same start
    model = apply_method(model, cfg)
    trainable, total = count_parameters(model)
    console.print(f"training {trainable:,} of {total:,} parameters ({cfg.method}) on {len(train_items)} examples, device {device}")
    info = RunInfo(
        run_id=run_dir.name, status="running", base_model=spec.model.name, base_model_path=base_path, method=cfg.method,
        artefact="adapter" if cfg.method == "lora" else "model", dataset=dataset.name, dataset_version=dataset.version,
        end_of_turn_ids=eot_ids, dropped_examples=dropped,
    )
    save_run_info(run_dir, info)
    started = time.perf_counter()
    history = _loop(model, tokenizer, device, spec, train_items, val_items, run_dir, info)
    info.train_seconds = round(time.perf_counter() - started, 1)
    replace_folder(run_dir / "checkpoints" / f"step-{info.best_step}", run_dir / info.artefact)
    info.status = "completed"
    save_run_info(run_dir, info)
    plot_loss(history, run_dir / "loss.png")
    return TrainResult(run_dir, info, history)


def _loop(model, tokenizer, device, spec: RunSpec, train_items: list[Encoded], val_items: list[Encoded], run_dir: Path, info: RunInfo) -> list[dict]:
    cfg = spec.train
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    params = [p for p in model.parameters() if p.requires_grad]
    distributed.same_start(params)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(math.ceil(len(train_items) / cfg.batch_size) / cfg.grad_accum)
    total_steps = steps_per_epoch * cfg.epochs
    warmup = int(total_steps * cfg.warmup_ratio)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / max(1, warmup) if s < warmup else max(0.0, (total_steps - s) / max(1, total_steps - warmup))
    )
    # Validation points spread evenly over each epoch; the last one always ends the epoch.
    eval_steps = {e * steps_per_epoch - (k * steps_per_epoch) // cfg.evals_per_epoch for e in range(1, cfg.epochs + 1) for k in range(cfg.evals_per_epoch)}
    packed, waste = choose_packing(cfg.packing, train_items, cfg.batch_size, cfg.seed)
    console.print(f"batches {'packed' if packed else 'length-grouped'} (length-grouped padding would be {waste:.0%} of tokens)")
    history: list[dict] = []
    step, started, tokens_seen = 0, time.perf_counter(), 0
    with (run_dir / "metrics.jsonl").open("a", encoding="utf-8") as metrics_file, progress() as bar:
        task = bar.add_task("training", total=total_steps, info="")
        for epoch in range(1, cfg.epochs + 1):
            model.train()
            batches = make_batches(
                train_items, cfg.batch_size, cfg.seed, epoch, packed, cfg.max_seq_len, *distributed.rank_and_world(), tokens_per_forward(cfg.tokens_per_forward, cfg.max_seq_len, device.type)
            )
            for group_start in range(0, len(batches), cfg.grad_accum):
                group = batches[group_start : group_start + cfg.grad_accum]
                loss_value, grad_norm, n_trained, n_real = _optimizer_step(model, group, pad_id, device, params, optimizer, cfg.max_grad_norm)
                schedule.step()
                step += 1
                tokens_seen += n_real
                elapsed = time.perf_counter() - started
                record = {
                    "step": step, "epoch": round(epoch - 1 + (group_start + len(group)) / len(batches), 4), "loss": round(loss_value, 5),
                    "lr": optimizer.param_groups[0]["lr"], "grad_norm": round(grad_norm, 4), "trained_tokens": n_trained,
                    "tokens": n_real, "tokens_per_s": round(tokens_seen / elapsed, 1), "elapsed_s": round(elapsed, 1),
                }
                _log(metrics_file, history, record)
                bar.update(task, advance=1, info=f"epoch {epoch} loss {loss_value:.3f} {record['tokens_per_s']:.0f} tok/s")
                if step in eval_steps:
                    val_loss = _validate_and_checkpoint(model, tokenizer, val_items, pad_id, device, cfg.batch_size, run_dir, info, step, record["epoch"])
                    _log(metrics_file, history, {"step": step, "epoch": record["epoch"], "val_loss": val_loss})
                    bar.update(task, info=f"epoch {epoch} val_loss {val_loss}")
    return history


def _validate_and_checkpoint(model, tokenizer, val_items, pad_id, device, batch_size, run_dir: Path, info: RunInfo, step: int, epoch: float) -> float | None:
    """Validation loss now; a checkpoint; the best one (lowest validation loss) is remembered and kept."""
    val_loss = evaluate_loss(model, val_items, pad_id, device, batch_size) if val_items else None
    _save_checkpoint(model, tokenizer, run_dir, step, info.end_of_turn_ids)
    if val_loss is None or info.best_val_loss is None or val_loss < info.best_val_loss:
        info.best_step, info.best_epoch, info.best_val_loss = step, epoch, val_loss
        save_run_info(run_dir, info)
    _prune_checkpoints(run_dir, {step, info.best_step})
    return val_loss


def _log(handle, history: list[dict], record: dict) -> None:
    history.append(record)
    handle.write(json.dumps(record) + "\n")
    handle.flush()


def _optimizer_step(model, group, pad_id, device, params, optimizer, max_grad_norm) -> tuple[float, float, int, int]:
    """One optimiser step over a group of micro-batches, every trained token weighted equally.
    Returns (loss per trained token, gradient norm, trained tokens, real tokens)."""
    total_trained = sum(item.n_trained for batch in group for item in batch)
    total_loss, real_tokens = 0.0, 0
    for batch in group:
        real_tokens += sum(len(item.input_ids) for item in batch)
        for local in batch_tensors(batch, pad_id):
            loss_sum, _ = summed_loss(model, {k: v.to(device) for k, v in local.items()})
            (loss_sum / total_trained).backward()
            total_loss += float(loss_sum.detach())
    distributed.sum_gradients(params)
    total_loss = distributed.global_sum(total_loss)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    if not torch.isfinite(grad_norm) or not math.isfinite(total_loss):
        raise UserError(
            f"loss or gradient became {total_loss if not math.isfinite(total_loss) else float(grad_norm)}; training stopped",
            fix="lower train.lr; the checkpoints of earlier epochs are kept in the run folder",
        )
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total_loss / total_trained, float(grad_norm), total_trained, real_tokens


@torch.no_grad()
def evaluate_loss(model, items: list[Encoded], pad_id: int, device, batch_size: int) -> float:
    model.eval()
    total, count = 0.0, 0
    ordered = sorted(items, key=lambda item: len(item.input_ids))
    for start in range(0, len(ordered), batch_size):
        tensors = {k: v.to(device) for k, v in collate(ordered[start : start + batch_size], pad_id).items()}
        loss_sum, n = summed_loss(model, tensors)
        total += float(loss_sum)
        count += n
    model.train()
    return round(total / max(1, count), 5)


def _save_checkpoint(model, tokenizer, run_dir: Path, step: int, eot_ids: list[int]) -> None:
    """Written to a temporary folder and renamed, so a crash never leaves a half checkpoint to be picked."""
    target = run_dir / "checkpoints" / f"step-{step}"
    staging = target.with_name(f".{target.name}.tmp")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(staging, ignore_errors=True)  # left by a crash mid-save
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        generation.eos_token_id = eot_ids
        generation.pad_token_id = tokenizer.pad_token_id
        generation.save_pretrained(staging)
    staging.rename(target)


def _prune_checkpoints(run_dir: Path, keep: set[int]) -> None:
    """Full-model checkpoints are large: keep only the best and the latest."""
    for folder in (run_dir / "checkpoints").glob("step-*"):
        if int(folder.name.split("-")[1]) not in keep:
            shutil.rmtree(folder)
