"""FSDP for a run launched by `accelerate launch` with an FSDP config (see accel.py): every
transformer block, then the whole model, is sharded with torch FSDP2 `fully_shard`, so each
process holds 1/N of the weights, gradients and optimiser state.

The arithmetic stays tunesmith's: each process divides its summed token losses by the trained
tokens of the whole global step (times N, since FSDP averages the gradients it reduce-scatters),
so N sharded processes train what one process trains. The model is sharded after any checkpoint
was restored into it unsharded; checkpoints gather the full weights (ordinary safetensors
adapters or models) and the full optimiser state, so a checkpoint resumes in any layout.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

from tunesmith.chat_template import IGNORE
from tunesmith.train.settings import make_schedule


def is_sharded(model: Any) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _block_classes(model: Any) -> set[str]:
    """The transformer block classes to shard one by one: accelerate's setting if given, else the model's own list."""
    named = os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "")
    if named.strip():
        return {name.strip() for name in named.split(",") if name.strip()}
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return set(getattr(base, "_no_split_modules", None) or [])


def shard(model: Any) -> Any:
    """Shard in place (every process must call this with the same weights); returns the model."""
    from torch.distributed.fsdp import fully_shard

    reshard = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() != "false"
    classes = _block_classes(model)
    blocks = [module for module in model.modules() if type(module).__name__ in classes]
    if not blocks:
        from tunesmith.errors import UserError

        looked = sorted(classes) or "the model's _no_split_modules"
        raise UserError(
            f"no transformer block to shard in {type(model).__name__} (looked for {looked})",
            where="FSDP_TRANSFORMER_CLS_TO_WRAP",
            fix="set fsdp_config.fsdp_transformer_layer_cls_to_wrap to the model's decoder layer class",
        )
    for block in blocks:
        fully_shard(block, reshard_after_forward=reshard)
    fully_shard(model, reshard_after_forward=reshard)
    return model


def _trainable_names(model: Any) -> list[str]:
    """Parameter names in the optimiser's order (FSDP2 keeps the names of the unsharded model)."""
    return [name for name, param in model.named_parameters() if param.requires_grad]


def _same_kind(optimizer: Any, params: list[torch.Tensor]) -> Any:
    """A new optimiser of the same class and settings over other parameters (defaults holds a few
    entries that the constructor does not take, such as AdamW's decoupled_weight_decay)."""
    import inspect

    accepted = inspect.signature(type(optimizer).__init__).parameters
    return type(optimizer)(params, **{k: v for k, v in optimizer.defaults.items() if k in accepted})


def _by_name(plain: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """torch's optimiser state (parameters by position) keyed by parameter name, as FSDP's loaders take it."""
    groups = [{**group, "params": [names[i] for i in group["params"]]} for group in plain["param_groups"]]
    return {"state": {names[i]: value for i, value in plain["state"].items()}, "param_groups": groups}


def _by_position(full: dict[str, Any], names: list[str]) -> dict[str, Any]:
    index = {name: i for i, name in enumerate(names)}
    groups = [{**group, "params": [index[name] for name in group["params"]]} for group in full["param_groups"]]
    return {"state": {index[name]: value for name, value in full["state"].items()}, "param_groups": groups}


def optimizer_state(model: Any, optimizer: Any) -> dict[str, Any]:
    """The optimiser's state as one process holds it unsharded, whatever the layout: a checkpoint
    from a sharded run resumes with or without FSDP (a collective when sharded: all processes call it)."""
    if not is_sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    full = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=False))
    return _by_position(full, _trainable_names(model))


def full_weights(model: Any) -> dict[str, torch.Tensor] | None:
    """The whole model's weights for save_pretrained when sharded (a collective); None otherwise."""
    if not is_sharded(model):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=False))
    # A tied weight (lm_head = embed_tokens) comes back under both names; save_pretrained, given
    # weights, would write both, so keep the one name an unsharded save keeps.
    tied = {name for name, _ in model.named_parameters(remove_duplicate=False)} - {name for name, _ in model.named_parameters()}
    return {name: value for name, value in weights.items() if name not in tied}


def _filler(pad_id: int) -> dict[str, torch.Tensor]:
    """A forward pass that trains nothing: two pad tokens, no label."""
    ids = torch.full((1, 2), pad_id, dtype=torch.long)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.full_like(ids, IGNORE)}


def equal_passes(group: list, objective: Any, pad_id: int, device: Any) -> list[dict[str, torch.Tensor]]:
    """This process's forward passes for a step, padded with passes that train nothing to as many as
    the busiest process runs: FSDP and DeepSpeed communicate inside every pass, so all must run each."""
    passes = [local for batch in group for local in objective.tensors(batch, pad_id)]
    most = torch.tensor([len(passes)], device=device)
    dist.all_reduce(most, op=dist.ReduceOp.MAX)
    return passes + [_filler(pad_id)] * (int(most.item()) - len(passes))


def shard_for_training(model: Any, optimizer: Any, schedule: Any, params: list, cfg: Any, total_steps: int) -> tuple[Any, Any, Any, list]:
    """Shard the model and move the optimiser onto the shards, its state (restored from a
    checkpoint, or fresh) included; the schedule follows the new optimiser. Sharding after
    restoring means a checkpoint loads exactly as it does in one process."""
    if is_sharded(model):
        return model, optimizer, schedule, params
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    from tunesmith.ui import console

    plain, schedule_state, names = optimizer.state_dict(), schedule.state_dict(), _trainable_names(model)
    shard(model)
    params = [param for param in model.parameters() if param.requires_grad]
    optimizer = _same_kind(optimizer, params)
    schedule = make_schedule(optimizer, cfg, total_steps)
    if plain["state"]:  # given no state, torch's loader takes a zero step to create it, which would count as Adam's first
        set_optimizer_state_dict(model, optimizer, _by_name(plain, names), options=StateDictOptions(full_state_dict=True))
    schedule.load_state_dict(schedule_state)
    world = dist.get_world_size()
    console.print(f"model sharded with FSDP2 over {world} processes ({len(params)} trainable tensors, each split {world} ways)")
    return model, optimizer, schedule, params
