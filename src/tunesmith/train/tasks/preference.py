"""`train.task: preference`: learn from pairs of a preferred and a rejected answer (DPO, or the
reference-free SimPO and ORPO), with any method, in the shared loop (checkpoints, resume, budgets,
estimates, several processes) through `Preference`, the task's objective.

DPO compares the model with its starting point. Instead of a second, frozen copy of the model in
memory (TRL's DPOTrainer keeps one, or switches the adapter off for a second forward pass every
step), the base model's log-probability of every pair's two answers is computed once, before the
method is applied (so with the base weights, for every method), and kept in the run folder
(`reference_logps.json`): a resumed run reads it back and computes nothing again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from tunesmith.chat_template import end_of_turn_ids
from tunesmith.config import PreferenceSpec, RunSpec
from tunesmith.data.dataset import Dataset
from tunesmith.data.example import Example
from tunesmith.errors import UserError
from tunesmith.eval.preference import (
    REFERENCE_FILE,
    Pair,
    encode_pairs,
    pair_losses,
    pair_tensors,
    read_reference,
    response_logps,
    score_pairs,
    validation_metrics,
)
from tunesmith.models.loading import load_model
from tunesmith.models.methods import apply_method, count_parameters, load_for_method
from tunesmith.registry.runfolder import write_config
from tunesmith.train import kernels
from tunesmith.train.batching import Batch, flat_passes, padded_chunks
from tunesmith.train.kernels.segments import use_segment_attention
from tunesmith.train.loop import Items, TrainingLoop, TrainResult, finish, open_run_info, run_interruptible
from tunesmith.train.parallel import distributed, strategy
from tunesmith.train.run.estimate import TrainEstimate, estimate_training, print_estimate
from tunesmith.train.run.guards import Budget, Monitor
from tunesmith.train.settings import resolve_settings
from tunesmith.train.tasks.causal_lm import _selective_head_supported
from tunesmith.ui import console

SPLITS = ("train", "validation", "test")


class Preference:
    """The preference objective in the shared loop: a micro-batch of pairs is one forward pass over
    its chosen and rejected rows; the loss is summed over pairs (the step divides by the pairs of
    the whole batch); validation logs the loss and the rewards; the lowest validation loss is best."""

    # Sequences may share a flat row with per-example attention (the layout decides, as for supervised
    # batches: no padding, each sequence attending only to itself); a row packed with a mask is not used.
    packs = True
    files: dict[str, str] = {}

    def __init__(self, spec: PreferenceSpec):
        self.objective, self.beta, self.gamma = spec.objective, spec.strength, spec.simpo_gamma

    def tensors(self, batch: list[Pair], pad_id: int) -> list[dict[str, torch.Tensor]]:
        """This process's pairs in forward passes of at most train.tokens_per_forward tokens: exact,
        since the step divides by the pairs of the whole batch."""
        if not isinstance(batch, Batch):
            return [pair_tensors(list(batch), pad_id)]
        local = batch.local()
        if batch.flat:
            return [pair_tensors(chunk, pad_id, flat=True) for chunk in flat_passes(local, batch.max_tokens)]
        return [pair_tensors(chunk, pad_id) for chunk in padded_chunks(local, batch.max_tokens)]

    def _losses(self, model: Any, tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logps, counts = response_logps(model, tensors, _selective_head_supported(model))
        return pair_losses(self.objective, self.beta, logps, counts, tensors.get("reference"), self.gamma)

    def summed_loss(self, model: Any, tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        losses, _, _ = self._losses(model, tensors)
        return losses.sum(), len(losses)

    @torch.no_grad()
    def validate(self, model: Any, items: list[Pair], pad_id: int, device: torch.device, batch_size: int) -> dict[str, Any]:
        if not items:
            return {"val_loss": None}
        model.eval()
        losses: list[float] = []
        chosen: list[float] = []
        rejected: list[float] = []
        for start in range(0, len(items), batch_size):
            tensors = {k: v.to(device) for k, v in pair_tensors(items[start : start + batch_size], pad_id).items()}
            loss, reward_c, reward_r = self._losses(model, tensors)
            losses += loss.tolist()
            chosen += reward_c.tolist()
            rejected += reward_r.tolist()
        model.train()
        return validation_metrics(losses, chosen, rejected)

    def score(self, found: dict[str, Any]) -> tuple[list[float] | None, dict[str, float] | None]:
        if found.get("val_loss") is None:
            return None, None
        # the Monitor's rule (lowest validation loss) decides; the rewards ride along into run.json
        return [-found["val_loss"]], {k.removeprefix("val_"): v for k, v in found.items() if k != "val_loss"}

    def best_text(self, monitor: Monitor) -> str:
        return f"loss than {monitor.best_val_loss}"


def _encode(spec: RunSpec, splits: dict[str, list[Example]], tokenizer: Any, name: str) -> tuple[dict[str, list[Pair]], list[str]]:
    pairs: dict[str, list[Pair]] = {}
    dropped: list[str] = []
    for split in SPLITS:
        examples = splits.get(split, [])
        missing = [e.id for e in examples if e.rejected is None]
        if missing:
            raise UserError(
                f"train.task preference needs a preferred and a rejected answer in every example; {len(missing)} example(s) of {split} have none "
                f"(first: {missing[0]})",
                where=f"dataset {name}",
                fix="prepare a preference file (formats preference or prompt_chosen_rejected, docs/preference.md), or use train.task causal_lm",
            )
        pairs[split], left_out = encode_pairs(tokenizer, examples, spec.train.max_seq_len)
        if split == "train":
            dropped = left_out
    if not pairs["train"]:
        raise UserError("no training pair has an answer token left after truncation", fix=f"raise train.max_seq_len (now {spec.train.max_seq_len})")
    if dropped:
        console.print(f"[yellow]dropped {len(dropped)} pair(s) with an answer cut away by truncation to {spec.train.max_seq_len} tokens")
    return pairs, dropped


def reference_logps(model: Any, tokenizer: Any, device: torch.device, pairs: dict[str, list[Pair]], run_dir: Path, batch_size: int, base: str) -> Path:
    """Every pair's reference log-probabilities, attached to it: read from the run folder when a
    previous session wrote them, else computed now (each process scores a share; process 0 writes)."""
    path = run_dir / REFERENCE_FILE
    table = read_reference(run_dir) if distributed.is_main() else None
    table = distributed.share_from_main(table)
    if table is None:
        table = _compute_reference(model, tokenizer, device, pairs, batch_size)
        if distributed.is_main():
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"base_model": base, "pairs": table}), encoding="utf-8")
            os.replace(tmp, path)
        console.print(f"reference log-probabilities of {sum(len(v) for v in table.values())} pairs computed with the base weights: {path.name}")
    else:
        console.print(f"reference log-probabilities read from {path.name} (not computed again)")
    for split, items in pairs.items():
        known = table.get(split, {})
        for pair in items:
            if pair.example_id not in known:
                raise UserError(
                    f"{path} has no reference log-probabilities for pair {pair.example_id} of {split}",
                    fix="the run's dataset or max_seq_len changed since it started: start a new run",
                )
            pair.reference = tuple(known[pair.example_id])  # type: ignore[assignment]
    return path


def _compute_reference(model: Any, tokenizer: Any, device: torch.device, pairs: dict[str, list[Pair]], batch_size: int) -> dict[str, dict[str, list[float]]]:
    rank, world = distributed.rank_and_world()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    select = _selective_head_supported(model)
    # Flat rows with per-example attention where the model takes it (training switches to it too):
    # on CPUs several times faster than padded rows through SDPA.
    flat = use_segment_attention(model)
    share: dict[str, dict[str, list[float]]] = {}
    for split, items in pairs.items():
        mine = items[rank::world]
        scored = score_pairs(model, mine, pad_id, device, batch_size, select, flat)
        share[split] = {p.example_id: [c, r] for p, (c, r, _, _) in zip(mine, scored)}
    table: dict[str, dict[str, list[float]]] = {split: {} for split in pairs}
    for part in distributed.per_process(share) if world > 1 else [share]:
        for split, found in part.items():
            table[split].update(found)
    return table


def train_preference(
    spec: RunSpec, dataset: Dataset, replay: list[Any], run_dir: Path, base_path: str, budget: Budget | None = None, resume_from: Path | None = None
) -> TrainResult:
    """load → encode the pairs → the reference log-probabilities (once, base weights) → settle the
    numbers → apply the method → estimate → loop → artefact. `replay` is always empty: the config
    refuses data.replay for this task."""
    model, tokenizer, device = load_for_method(spec.model, base_path, spec.train)
    pairs, dropped = _encode(spec, dataset.splits, tokenizer, dataset.name)
    objective = Preference(spec.train.preference)
    items = Items(pairs["train"], pairs["validation"], dropped)
    cfg, notes = resolve_settings(spec.train, len(items.train), device)
    spec = spec.model_copy(update={"train": cfg})
    if resume_from is None:
        write_config(run_dir, spec, notes)
    if objective.objective == "dpo":
        reference_logps(model, tokenizer, device, pairs, run_dir, cfg.batch_size, base_path)  # before the method: the base weights
    torch.manual_seed(cfg.seed)  # right before the adapters are initialised, so the same seed gives the same start
    model = apply_method(model, cfg)
    kernels.switch_on(model, device)
    trainable, total = count_parameters(model)
    console.print(
        f"training {trainable:,} of {total:,} parameters ({cfg.method}, {objective.objective} beta {objective.beta:g}) on {len(items.train)} pairs, device {device}"
    )
    if resume_from is None:
        print_estimate(estimate_training(model, tokenizer, device, cfg, items.train, items.validation, len(dropped), objective=objective), run_dir)
    info = open_run_info(
        run_dir, spec, dataset, base_path, resuming=resume_from is not None, end_of_turn_ids=end_of_turn_ids(tokenizer), dropped_examples=dropped
    )
    loop = TrainingLoop(model, tokenizer, device, cfg, items, run_dir, info, budget, spec, objective=objective, strategy=strategy.for_launch())
    if resume_from is not None:
        loop.restore(resume_from)
    return finish(loop, *run_interruptible(loop))


def estimate_preference(spec: RunSpec, splits: dict[str, list[Example]], name: str) -> TrainEstimate:
    """`train --dry-run` for a preference run: the run's model, method, settings and pairs, timed; nothing
    written. The reference pass is not timed: it costs about one forward pass over the pairs."""
    model, tokenizer, device = load_model(spec.model)
    pairs, dropped = _encode(spec, splits, tokenizer, name)
    objective = Preference(spec.train.preference)
    if objective.objective == "dpo":
        for pair in pairs["train"] + pairs["validation"]:
            pair.reference = (0.0, 0.0)  # timing only: the loss's cost does not depend on these values
    cfg, _ = resolve_settings(spec.train, len(pairs["train"]), device)
    torch.manual_seed(cfg.seed)
    model = apply_method(model, cfg)
    console.print(f"timing a few optimizer steps on {device} for the estimate")
    estimate = estimate_training(model, tokenizer, device, cfg, pairs["train"], pairs["validation"], len(dropped), objective=objective)
    print_estimate(estimate)
    return estimate
