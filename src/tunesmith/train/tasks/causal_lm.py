"""The causal-LM task: token-level cross-entropy over trained positions only, and what it means
to the shared loop (loop.TrainingLoop): how a micro-batch becomes tensors and a summed loss, how
validation is scored (the lowest validation loss is best).

The output projection runs only on positions that carry a label. With loss on assistant
tokens, that is a small share of the sequence, and on a 49k-token vocabulary the skipped
projection is a large share of the step's compute. The projection and the cross-entropy then
run together in chunks (kernels/head_loss.py), so no full logits tensor is ever held.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from tunesmith.chat_template import IGNORE, Encoded, collate, encode_all, end_of_turn_ids
from tunesmith.config import RunSpec
from tunesmith.data.dataset import Dataset
from tunesmith.data.example import Example
from tunesmith.errors import UserError
from tunesmith.models.loading import load_model, load_tokenizer
from tunesmith.models.methods import apply_method, count_parameters, is_prompt_learning, load_for_method
from tunesmith.registry.runfolder import write_config
from tunesmith.train import kernels
from tunesmith.train.batching import batch_tensors
from tunesmith.train.continued import start_adapter
from tunesmith.train.kernels.head_loss import fused_head_loss
from tunesmith.train.loop import Items, Replay, TrainingLoop, TrainResult, finish, open_run_info, run_interruptible
from tunesmith.train.parallel import strategy
from tunesmith.train.parallel.fsdp import is_sharded
from tunesmith.train.run.estimate import TrainEstimate, estimate_training, print_estimate
from tunesmith.train.run.guards import Budget, Monitor
from tunesmith.train.run.probes import build_probes
from tunesmith.train.settings import replay_count, resolve_settings
from tunesmith.ui import console


def _unwrap(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _selective_head_supported(model: Any) -> bool:
    if is_prompt_learning(model):  # the virtual tokens are added in PEFT's forward, which the shortcut skips
        return False
    if is_sharded(model):  # FSDP gathers the weights in the model's own forward, which the shortcut skips
        return False
    base = _unwrap(model)
    config = getattr(base, "config", None)
    return (
        hasattr(base, "get_decoder")
        and base.get_output_embeddings() is not None
        and not getattr(config, "final_logit_softcapping", None)
        and getattr(config, "logit_scale", None) is None
    )


def summed_loss(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(sum of token losses, number of trained tokens): the caller divides by the tokens of the
    whole optimiser step, so gradient accumulation weighs every token equally. A token of a
    distilled example (Encoded.distill) costs its KL divergence from the base model's next-token
    distribution instead of its cross-entropy."""
    targets = batch["labels"][:, 1:]
    selected = targets != IGNORE
    n_tokens = int(selected.sum())
    hidden, project = _trained_positions(model, batch, selected)
    if "distill" not in batch:
        return _cross_entropy(hidden, project, targets[selected]), n_tokens
    distilled = batch["distill"][:, 1:][selected]
    # The base's own predictions: PEFT's switch, which every adapter layer reads (the fused LoRA kernel
    # included); the config admits this target for adapter methods only.
    with torch.no_grad(), model.disable_adapter():
        base_hidden, base_project = _trained_positions(model, batch, selected)
        base_logits = base_project(base_hidden[distilled]).float()
    written = ~distilled
    return _cross_entropy(hidden[written], project, targets[selected][written]) + distribution_loss(project(hidden[distilled]), base_logits), n_tokens


def distribution_loss(logits: torch.Tensor, base_logits: torch.Tensor) -> torch.Tensor:
    """Summed KL(base || tuned) over positions: zero where the tuned model predicts as the base
    does, and, unlike the cross-entropy on the base's greedy token, it also keeps how sure the base
    was and what it ranked second."""
    return F.kl_div(F.log_softmax(logits.float(), dim=-1), F.log_softmax(base_logits, dim=-1), log_target=True, reduction="sum")


def _trained_positions(model: Any, batch: dict[str, torch.Tensor], selected: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """(what the model computes at the trained positions, the projection from that to logits): the
    decoder's hidden states and the output head where the head may run on those positions alone,
    else the logits themselves and the identity."""
    # Packed rows carry position_ids and no attention_mask; with no cache, transformers then keeps
    # the packed examples from attending to each other. Flat rows also carry their example
    # boundaries, for segments.segment_attention.
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k") if batch.get(key) is not None}
    if "cu_seq_lens_q" in inputs:
        # Read once here rather than in each layer's attention: on a GPU every read waits for the device.
        inputs["max_length_q"] = inputs["max_length_k"] = int(torch.diff(inputs["cu_seq_lens_q"]).max())
    if _selective_head_supported(model):
        base = _unwrap(model)
        hidden = base.get_decoder()(**inputs, use_cache=False).last_hidden_state[:, :-1][selected]
        return hidden, base.get_output_embeddings()
    logits = model(**inputs, use_cache=False).logits  # as above: no cache keeps packed examples apart
    # Prompt tuning returns logits for its virtual tokens first; the input's are the last ones.
    return logits[:, -batch["input_ids"].shape[1] :][:, :-1][selected], torch.nn.Identity()


def _cross_entropy(hidden: torch.Tensor, project: Any, targets: torch.Tensor) -> torch.Tensor:
    if type(project) is torch.nn.Linear:  # an adapter or wrapper on the head has its own forward
        return fused_head_loss(hidden, project, targets)
    return F.cross_entropy(project(hidden).float(), targets, reduction="sum")


class CausalLM:
    """Token-level cross-entropy on the trained tokens; the best validation is the lowest loss."""

    packs = True
    files: dict[str, str] = {}

    def tensors(self, batch: list, pad_id: int) -> list[dict[str, torch.Tensor]]:
        return batch_tensors(batch, pad_id)

    def summed_loss(self, model: Any, tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        return summed_loss(model, tensors)

    def validate(self, model: Any, items: list, pad_id: int, device: torch.device, batch_size: int) -> dict[str, Any]:
        return {"val_loss": evaluate_loss(model, items, pad_id, device, batch_size) if items else None}

    def score(self, found: dict[str, Any]) -> tuple[list[float] | None, dict[str, float] | None]:
        return None, None  # the Monitor's own rule: lower validation loss is better

    def best_text(self, monitor: Monitor) -> str:
        return f"loss than {monitor.best_val_loss}"


CAUSAL_LM = CausalLM()


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


def _encode(spec: RunSpec, dataset: Dataset, replay: list[Replay], tokenizer: Any) -> Items:
    cfg = spec.train
    train_items, dropped = encode_all(tokenizer, dataset.splits["train"], cfg.max_seq_len, cfg.train_on)
    val_items, _ = encode_all(tokenizer, dataset.splits["validation"], cfg.max_seq_len, cfg.train_on)
    if not train_items:
        raise UserError("no training example has a token left to learn", fix=f"raise train.max_seq_len (now {cfg.max_seq_len}) or check the assistant turns")
    if dropped:
        console.print(f"[yellow]dropped {len(dropped)} example(s) with nothing to learn after truncation to {cfg.max_seq_len} tokens")
    items = Items(train_items, val_items, dropped)
    keep = spec.data.keep_general
    for pool in replay:
        encoded, _ = encode_all(tokenizer, pool.examples, cfg.max_seq_len, cfg.train_on)
        if pool.name == "keep_general" and keep is not None and keep.target == "distribution":
            encoded = [replace(item, distill=True) for item in encoded]
        per_epoch = replay_count(len(train_items), pool.fraction) if encoded else 0
        items.replay.append(Replay(pool.name, encoded, pool.fraction, per_epoch))
        console.print(f"{pool.name}: {per_epoch} of {len(encoded)} examples mixed into each epoch")
    return items


def train_causal_lm(
    spec: RunSpec, dataset: Dataset, replay: list[Replay], run_dir: Path, base_path: str, budget: Budget | None, resume_from: Path | None = None
) -> TrainResult:
    """A causal LM trained with its method (full, LoRA, QLoRA, DoRA, prompt or prefix tuning) in
    run_dir: load → encode → settle the numbers → apply the method → estimate → loop → artefact."""
    model, tokenizer, device = load_for_method(spec.model, base_path, spec.train)
    start = start_adapter(spec)
    if start is not None:
        tokenizer = load_tokenizer(str(start))  # the parent's, saved with its adapter: its chat template
    items = _encode(spec, dataset, replay, tokenizer)
    cfg, notes = resolve_settings(spec.train, len(items.train) + items.replay_per_epoch, device)
    spec = spec.model_copy(update={"train": cfg})
    if resume_from is None:
        write_config(run_dir, spec, notes)  # the numbers the run actually used
    torch.manual_seed(cfg.seed)  # right before the adapters are initialised, so the same seed gives the same start
    model = apply_method(model, cfg, start=start)
    kernels.switch_on(model, device)
    trainable, total = count_parameters(model)
    console.print(f"training {trainable:,} of {total:,} parameters ({cfg.method}) on {len(items.train)} examples, device {device}")
    if resume_from is None:
        # The first epoch as trained, replay included, so the estimate's steps are the run's.
        epoch_items = items.for_epoch(cfg.seed, 1)
        print_estimate(estimate_training(model, tokenizer, device, cfg, epoch_items, items.validation, len(items.dropped), objective=CAUSAL_LM), run_dir)
    info = open_run_info(
        run_dir, spec, dataset, base_path, resuming=resume_from is not None, end_of_turn_ids=end_of_turn_ids(tokenizer), dropped_examples=items.dropped
    )
    loop = TrainingLoop(
        model,
        tokenizer,
        device,
        cfg,
        items,
        run_dir,
        info,
        budget,
        spec,
        objective=CAUSAL_LM,
        strategy=strategy.for_launch(),
        probes=build_probes(spec, dataset.splits["validation"]),
    )
    if resume_from is not None:
        loop.restore(resume_from)
    status, reason = run_interruptible(loop)
    return finish(loop, status, reason)


def estimate_causal_lm(spec: RunSpec, splits: dict[str, list[Example]], name: str) -> TrainEstimate:
    """`train --dry-run` for a causal LM: the run's own model, method, settings and batches, timed; nothing written."""
    model, tokenizer, device = load_model(spec.model)
    cfg = spec.train
    train_items, dropped = encode_all(tokenizer, splits["train"], cfg.max_seq_len, cfg.train_on)
    cfg, _ = resolve_settings(cfg, len(train_items), device)
    val_items, _ = encode_all(tokenizer, splits["validation"], cfg.max_seq_len, cfg.train_on)
    if not train_items:
        raise UserError("no training example has a token left to learn", fix=f"raise train.max_seq_len (now {cfg.max_seq_len}) or check the assistant turns")
    torch.manual_seed(cfg.seed)
    model = apply_method(model, cfg)
    console.print(f"timing a few optimizer steps on {device} for the estimate")
    estimate = estimate_training(model, tokenizer, device, cfg, train_items, val_items, len(dropped), objective=CAUSAL_LM)
    print_estimate(estimate)
    return estimate
