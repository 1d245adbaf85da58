"""DeepSpeed ZeRO stages 1 and 2 for a run launched by `accelerate launch` with a DEEPSPEED config
(see accel.py): each process keeps the whole model, and DeepSpeed partitions the optimiser state
(stage 1) and the reduced gradients too (stage 2) over the processes.

tunesmith builds the DeepSpeed engine itself (`deepspeed.initialize`), as sharding.py applies FSDP
itself, because accelerate 1.15 switches DeepSpeed off whenever the processes run on CPU. The
arithmetic stays tunesmith's: our AdamW (train.lr, train.weight_decay), our schedule, clipping at
train.max_grad_norm, one DeepSpeed accumulation step per optimiser step (our step accumulates its
micro-passes itself, and tells DeepSpeed which pass ends it), every pass's summed token loss
divided by the trained tokens of the whole global step. So N processes train what one trains.

Checkpoints stay ordinary: stage 1 and 2 never partition the weights, so adapter/ and model/ are
the usual safetensors folders, and the optimiser state is gathered into the layout one process
uses, so a checkpoint resumes with or without DeepSpeed. Stage 3 and offloading are refused.

The user's DeepSpeed settings come from the accelerate config's `deepspeed_config` section or the
JSON file it names (`deepspeed_config_file`); what tunesmith decides itself (optimiser, schedule,
batch sizes, accumulation, precision) is refused there rather than silently overridden.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.errors import UserError
from tunesmith.train.parallel import distributed

STAGES = (1, 2)
INSTALL = "pip install 'tunesmith[deepspeed]' (tunesmith's DeepSpeed path was tested with deepspeed 0.19.8)"
# accelerate's own deepspeed_config keys that only matter for stage 3 or for starting processes on
# several machines: accepted as accelerate reads them.
ACCELERATE_PASSIVE = {
    "zero3_init_flag",
    "zero3_save_16bit_model",
    "deepspeed_multinode_launcher",
    "deepspeed_hostfile",
    "deepspeed_exclusion_filter",
    "deepspeed_inclusion_filter",
    "offload_optimizer_nvme_path",
    "offload_param_nvme_path",
}
# Set by tunesmith in the DeepSpeed config it builds; a user's JSON may leave them out or say "auto".
OURS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping")
PRECISION = ("fp16", "bf16", "bfloat16", "amp")


@dataclass(frozen=True)
class ZeroSettings:
    stage: int
    clipping: float | None = None  # given by the user: must agree with train.max_grad_norm
    passthrough: dict[str, Any] = field(default_factory=dict)  # the rest of the user's DeepSpeed JSON
    clipping_where: str = "gradient_clipping"  # where clipping was set, for the message when it disagrees


def installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("deepspeed") is not None


def require_installed(where: str) -> None:
    if not installed():
        raise UserError("DeepSpeed is not installed (distributed_type: DEEPSPEED needs it)", where=where, fix=INSTALL)


# ------------------------------------------------------------------ reading and checking the settings


def _stage(value: Any, where: str) -> int:
    if value in (3, "3"):
        raise UserError(
            "ZeRO stage 3 is not supported by tunesmith: it partitions the weights themselves, which tunesmith's "
            "validation, generation and checkpoints would have to gather (not built or tested)",
            where=where,
            fix="use stage 2 (gradients and optimiser state partitioned), or distributed_type: FSDP with fsdp_version: 2 to shard the weights too",
        )
    if str(value) not in ("1", "2") or isinstance(value, bool):
        raise UserError(
            f"ZeRO stage must be 1 or 2 (got {value!r})",
            where=where,
            fix="set it to 2 (or 1); for plain data parallelism use distributed_type: MULTI_GPU or --nproc N",
        )
    return int(value)


def _offload(value: Any, where: str) -> None:
    device = value.get("device", "none") if isinstance(value, Mapping) else value
    if device not in (None, "none", False):
        raise UserError(
            f"offloading to {device!r} is not supported by tunesmith's DeepSpeed path (not run or tested)", where=where, fix="set it to none (or remove it)"
        )


def _accumulation(value: Any, where: str) -> None:
    if value not in (None, 1, "1", "auto"):
        raise UserError(
            f"gradient_accumulation_steps {value!r}: tunesmith accumulates inside its own optimiser step",
            where=where,
            fix="remove it (or set 1) and use train.grad_accum in the run config",
        )


def _clipping(value: Any, where: str) -> float | None:
    if value in (None, "auto"):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(
            f"gradient_clipping must be a number or auto (got {value!r})", where=where, fix="remove it: tunesmith clips at train.max_grad_norm"
        ) from None
    if isinstance(value, bool) or not math.isfinite(number) or number < 0:
        raise UserError(
            f"gradient_clipping must be a number of at least 0 (got {value!r})", where=where, fix="remove it: tunesmith clips at train.max_grad_norm"
        )
    return number


def from_accelerate(section: Any, config_path: str) -> ZeroSettings:
    """The `deepspeed_config` section of an accelerate YAML (the launching process checks it before anything starts)."""
    where = f"{config_path}: deepspeed_config"
    if section is None:
        section = {}
    if not isinstance(section, Mapping):
        raise UserError("deepspeed_config must be a mapping", where=where, fix="e.g. deepspeed_config: {zero_stage: 2}")
    file = section.get("deepspeed_config_file")
    if file not in (None, "", "none"):
        mixed = sorted(set(section) - {"deepspeed_config_file"} - ACCELERATE_PASSIVE)
        if mixed:
            raise UserError(
                f"{', '.join(mixed)} given next to deepspeed_config_file (accelerate takes the settings from one place)",
                where=f"{where}.{mixed[0]}",
                fix=f"move them into {file}, or drop deepspeed_config_file",
            )
        return from_json_file(Path(str(file)))
    for key in section:
        if key not in ACCELERATE_PASSIVE | {
            "zero_stage",
            "offload_optimizer_device",
            "offload_param_device",
            "gradient_accumulation_steps",
            "gradient_clipping",
            "deepspeed_config_file",
        }:
            raise UserError(
                f"{key} is not a deepspeed_config setting tunesmith knows",
                where=f"{where}.{key}",
                fix="remove it, or put DeepSpeed settings in a JSON file named by deepspeed_config_file",
            )
    stage = _stage(section.get("zero_stage", 2), f"{where}.zero_stage")
    _offload(section.get("offload_optimizer_device"), f"{where}.offload_optimizer_device")
    _offload(section.get("offload_param_device"), f"{where}.offload_param_device")
    _accumulation(section.get("gradient_accumulation_steps"), f"{where}.gradient_accumulation_steps")
    clipping = _clipping(section.get("gradient_clipping"), f"{where}.gradient_clipping")
    return ZeroSettings(stage, clipping, {}, f"{where}.gradient_clipping")


def from_json_file(path: Path) -> ZeroSettings:
    where = str(path)
    fix = 'point deepspeed_config_file at a DeepSpeed JSON file such as {"zero_optimization": {"stage": 2}}'
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot read the DeepSpeed config ({exc.strerror or exc})", where=where, fix=fix) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"not valid JSON ({exc.msg})", where=f"{where}:{exc.lineno}", fix=fix) from None
    return from_json(data, where)


def from_json(data: Any, where: str) -> ZeroSettings:
    if not isinstance(data, Mapping):
        raise UserError("a DeepSpeed config is a JSON object", where=where, fix='e.g. {"zero_optimization": {"stage": 2}}')
    for key in ("optimizer", "scheduler"):
        if key in data:
            raise UserError(
                f"a DeepSpeed {key} is not used: tunesmith trains with AdamW at train.lr / train.weight_decay and its own schedule",
                where=f"{where}: {key}",
                fix=f"remove the {key} section; set train.lr, train.weight_decay, train.scheduler in the run config",
            )
    for key in PRECISION:
        enabled = data.get(key, {}).get("enabled", False) if isinstance(data.get(key), Mapping) else data.get(key)
        if enabled not in (None, False, "auto"):
            raise UserError(
                f"{key} is not supported by tunesmith's DeepSpeed path: the model trains in its own dtype (model.dtype)",
                where=f"{where}: {key}.enabled",
                fix=f"set {key}.enabled to false (or remove {key}); choose model.dtype in the run config",
            )
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu"):
        if data.get(key) not in (None, "auto"):
            raise UserError(
                f"{key} {data[key]!r}: tunesmith's train.batch_size is the global batch",
                where=f"{where}: {key}",
                fix=f'set {key} to "auto" (or remove it) and use train.batch_size',
            )
    _accumulation(data.get("gradient_accumulation_steps"), f"{where}: gradient_accumulation_steps")
    clipping = _clipping(data.get("gradient_clipping"), f"{where}: gradient_clipping")
    zero = data.get("zero_optimization")
    if not isinstance(zero, Mapping):
        raise UserError(
            "zero_optimization is missing (DeepSpeed would run stage 0, plain data parallelism)",
            where=f"{where}: zero_optimization",
            fix='add "zero_optimization": {"stage": 2}',
        )
    stage = _stage(zero.get("stage", 0), f"{where}: zero_optimization.stage")
    _offload(zero.get("offload_optimizer"), f"{where}: zero_optimization.offload_optimizer")
    _offload(zero.get("offload_param"), f"{where}: zero_optimization.offload_param")
    if zero.get("cpu_offload"):
        raise UserError(
            "offloading to the CPU is not supported by tunesmith's DeepSpeed path",
            where=f"{where}: zero_optimization.cpu_offload",
            fix="set it to false (or remove it)",
        )
    passthrough = _without_auto({key: value for key, value in data.items() if key not in OURS and key not in PRECISION})
    return ZeroSettings(stage, clipping, passthrough, f"{where}: gradient_clipping")


def _without_auto(data: Mapping[str, Any]) -> dict[str, Any]:
    """ "auto" is a value only the Hugging Face integrations resolve (DeepSpeed itself rejects it):
    such a setting is left out, so DeepSpeed uses its own default."""
    return {key: _without_auto(value) if isinstance(value, Mapping) else value for key, value in data.items() if value != "auto"}


def from_env(environ: Mapping[str, str] | None = None) -> ZeroSettings:
    """Inside a process started by `accelerate launch`: the settings accelerate passed on, checked
    again, since a process started by hand never went through tunesmith's launcher."""
    env = os.environ if environ is None else environ
    precision = env.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if precision not in ("no", ""):
        raise UserError(
            f"mixed_precision {precision} is not supported with DeepSpeed: the model trains in its own dtype (model.dtype)",
            where="ACCELERATE_MIXED_PRECISION (mixed_precision in the accelerate config)",
            fix="set mixed_precision: 'no'",
        )
    file = env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if file not in (None, "", "none"):
        return from_json_file(Path(file))
    stage = _stage(env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2"), "ACCELERATE_DEEPSPEED_ZERO_STAGE (deepspeed_config.zero_stage)")
    _offload(
        env.get("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE"), "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE (deepspeed_config.offload_optimizer_device)"
    )
    _offload(env.get("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE"), "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE (deepspeed_config.offload_param_device)")
    _accumulation(env.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS"), "ACCELERATE_GRADIENT_ACCUMULATION_STEPS (deepspeed_config.gradient_accumulation_steps)")
    clipping = _clipping(env.get("ACCELERATE_GRADIENT_CLIPPING"), "ACCELERATE_GRADIENT_CLIPPING (deepspeed_config.gradient_clipping)")
    return ZeroSettings(stage, clipping, {}, "ACCELERATE_GRADIENT_CLIPPING (deepspeed_config.gradient_clipping)")


def check_clipping(settings: ZeroSettings, max_grad_norm: float) -> None:
    if settings.clipping is not None and settings.clipping != max_grad_norm:
        raise UserError(
            f"gradient_clipping {settings.clipping} disagrees with train.max_grad_norm {max_grad_norm} (tunesmith clips at train.max_grad_norm)",
            where=settings.clipping_where,
            fix=f"remove gradient_clipping, or set train.max_grad_norm: {settings.clipping} in the run config",
        )


def deepspeed_config(settings: ZeroSettings, world: int, max_grad_norm: float) -> dict[str, Any]:
    zero = dict(settings.passthrough.get("zero_optimization") or {})
    zero["stage"] = settings.stage
    return {
        "steps_per_print": 2**31 - 1,  # tunesmith logs every step itself
        **settings.passthrough,
        # One micro-batch per process per DeepSpeed step as far as DeepSpeed's bookkeeping goes: our
        # step holds the batches and accumulates its passes itself.
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "train_batch_size": world,
        "gradient_clipping": max_grad_norm,
        "zero_optimization": zero,
    }


# ------------------------------------------------------------------ inside the processes


def is_zero(optimizer: Any) -> bool:
    return hasattr(optimizer, "single_partition_of_fp32_groups")


def _groups(optimizer: Any) -> list[list[Any]]:
    """Each group's trainable parameters in the order DeepSpeed laid them into its flat buffer."""
    return list(getattr(optimizer, "round_robin_bit16_groups", None) or optimizer.bit16_groups)


def _gather_flat(part: Any) -> Any:
    """Every process's partition of one flat buffer, in rank order: the whole buffer (padding at the end)."""
    import torch
    import torch.distributed as dist

    pieces = [torch.empty_like(part) for _ in range(dist.get_world_size())]
    dist.all_gather(pieces, part.detach().contiguous())
    return torch.cat(pieces)


def _check_layout(optimizer: Any) -> None:
    """The optimiser-state gathering below assumes DeepSpeed's flat layout (parameters end to end in
    group order, padded at the end, cut in equal parts by rank); this DeepSpeed must agree, checked
    on the weights themselves, or checkpoints would hold scrambled optimiser state."""
    import torch

    for params, part in zip(_groups(optimizer), optimizer.single_partition_of_fp32_groups):
        flat = _gather_flat(part.data)
        whole = torch.cat([p.detach().reshape(-1).to(flat.dtype) for p in params])
        # compared bit for bit: weights already NaN (a broken model) must fail the NaN guard, not this check
        if flat.numel() < whole.numel() or not torch.equal(flat[: whole.numel()].view(torch.uint8), whole.view(torch.uint8)):
            raise UserError(
                "this DeepSpeed version lays out its ZeRO partitions in a way tunesmith does not read",
                where="deepspeed",
                fix="install deepspeed==0.19.8, the version tunesmith's DeepSpeed path was tested with",
            )


def full_optimizer_state(optimizer: Any, params: list[Any]) -> dict[str, Any]:
    """The optimiser state as one process with a plain AdamW over `params` holds it (a collective:
    every process calls it), so a checkpoint resumes with or without DeepSpeed."""
    import torch

    inner, index = optimizer.optimizer, {id(p): i for i, p in enumerate(params)}
    state: dict[int, dict[str, Any]] = {}
    for group_params, part in zip(_groups(optimizer), optimizer.single_partition_of_fp32_groups):
        mine = inner.state.get(part, {})
        for key, value in sorted(mine.items()):
            if torch.is_tensor(value) and value.numel() == part.numel() and value.dim() == 1:
                flat, offset = _gather_flat(value), 0
                for p in group_params:
                    state.setdefault(index[id(p)], {})[key] = flat[offset : offset + p.numel()].view_as(p).clone()
                    offset += p.numel()
            else:  # the step count, the same for every parameter
                for p in group_params:
                    state.setdefault(index[id(p)], {})[key] = value.clone() if torch.is_tensor(value) else value
    groups = [
        {**{key: value for key, value in group.items() if key != "params"}, "params": [index[id(p)] for p in group_params]}
        for group, group_params in zip(inner.param_groups, optimizer.bit16_groups)
    ]
    return {"state": dict(sorted(state.items())), "param_groups": groups}


def _load_full_state(optimizer: Any, plain: dict[str, Any], params: list[Any]) -> None:
    """Each process's partition of a plain AdamW state (from a checkpoint of any layout)."""
    import torch
    import torch.distributed as dist

    inner, index = optimizer.optimizer, {id(p): i for i, p in enumerate(params)}
    rank, world = dist.get_rank(), dist.get_world_size()
    for group_params, part in zip(_groups(optimizer), optimizer.single_partition_of_fp32_groups):
        saved = [plain["state"][index[id(p)]] for p in group_params]
        mine: dict[str, Any] = {}
        for key, value in saved[0].items():
            if torch.is_tensor(value) and value.shape == group_params[0].shape and value.dim() > 0:
                flat = torch.cat([entry[key].reshape(-1).to(part.dtype) for entry in saved])
                flat = torch.cat([flat, flat.new_zeros(part.numel() * world - flat.numel())])
                mine[key] = flat[rank * part.numel() : (rank + 1) * part.numel()].clone().to(part.device)
            else:
                mine[key] = value.clone() if torch.is_tensor(value) else value
        inner.state[part] = mine


def full_weights(model: Any) -> dict[str, Any]:
    """The model's weights for save_pretrained. Every process holds them whole, but DeepSpeed made
    the trainable ones views into one flat buffer, and safetensors refuses (transformers drops, as
    if tied) tensors that share memory: those are copied out."""
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    tied = {name for name, _ in model.named_parameters(remove_duplicate=False)} - {name for name, _ in model.named_parameters()}
    weights = {}
    for name, value in model.state_dict(keep_vars=True).items():
        if name not in tied:
            weights[name] = value.detach().clone() if id(value) in trainable else value.detach()
    return weights


class Zero:
    """DeepSpeed ZeRO (stage 1 or 2) as a step strategy (see step.py). Stage 2 reduces gradients
    after every backward pass, so every process runs as many passes (padding with passes that
    train nothing, as FSDP does); the engine clips, steps AdamW and zeroes the gradients."""

    name = "deepspeed"

    def __init__(self) -> None:
        self.engine: Any = None
        self.params: list = []

    def prepare(self, model: Any, optimizer: Any, schedule: Any, params: list, cfg: Any, total_steps: int) -> tuple[Any, Any, Any, list]:
        """Wrap the model and optimiser in a DeepSpeed engine, the optimiser state (restored from a
        checkpoint, or fresh) and the schedule carried over."""
        if is_zero(optimizer):
            return model, optimizer, schedule, params
        import torch.distributed as dist

        from tunesmith.models.loading import import_deepspeed_quietly
        from tunesmith.train.parallel.fsdp import _same_kind
        from tunesmith.train.settings import make_schedule
        from tunesmith.ui import console

        settings = from_env()
        check_clipping(settings, cfg.max_grad_norm)
        deepspeed = import_deepspeed_quietly()
        plain, schedule_state = optimizer.state_dict(), schedule.state_dict()
        inner = _same_kind(optimizer, params)
        config = deepspeed_config(settings, dist.get_world_size(), cfg.max_grad_norm)
        with contextlib.redirect_stdout(sys.stderr):
            self.engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=inner, config=config, dist_init_required=False)
        # Without fp16 DeepSpeed does not look for inf/nan gradients and would step with them; with the
        # check on, it skips such a step, and update() reports the divergence.
        optimizer.check_grad_overflow = True
        _check_layout(optimizer)
        # The hyperparameters, the schedule's current lr included, come from the saved state as a
        # plain optimiser's load_state_dict would restore them.
        for group, saved in zip(inner.param_groups, plain["param_groups"]):
            group.update({key: value for key, value in saved.items() if key != "params"})
        if plain["state"]:
            _load_full_state(optimizer, plain, params)
        schedule = make_schedule(inner, cfg, total_steps)
        schedule.load_state_dict(schedule_state)
        for group, saved in zip(inner.param_groups, plain["param_groups"]):
            group["lr"] = saved["lr"]  # a new LambdaLR sets lr for step 0; a resumed run is further on
        self.params = params
        split = "optimiser state and gradients" if settings.stage == 2 else "optimiser state"
        world = dist.get_world_size()
        console.print(f"DeepSpeed ZeRO-{settings.stage} over {world} processes ({split} split {world} ways, whole weights in each)")
        return model, optimizer, schedule, params

    def passes(self, group: list, objective: Any, pad_id: int, device: Any) -> list:
        from tunesmith.train.parallel.fsdp import equal_passes

        return equal_passes(group, objective, pad_id, device)

    def backward(self, loss_sum: Any, step_tokens: int, last: bool) -> None:
        import torch.distributed as dist

        self.engine.set_gradient_accumulation_boundary(last)
        # DeepSpeed averages the gradients over processes; ours are shares of one sum, so scale them up first.
        self.engine.backward(loss_sum * (dist.get_world_size() / step_tokens))

    def reduce(self, params: list, total_loss: float, device: Any) -> float:
        return distributed.global_sum(total_loss, device)

    def update(self, params: list, optimizer: Any, max_grad_norm: float) -> float:
        from tunesmith.train.step import Diverged

        self.engine.step()  # clips at gradient_clipping (= train.max_grad_norm), steps AdamW, zeroes the gradients
        if getattr(self.engine.optimizer, "overflow", False):  # DeepSpeed found inf/nan gradients and skipped the step
            raise Diverged("the gradient norm became nan or inf")
        grad_norm = self.engine.get_global_grad_norm()
        return float(grad_norm.item() if hasattr(grad_norm, "item") else grad_norm)

    def optimizer_state(self, model: Any, optimizer: Any, params: list) -> dict[str, Any]:
        return full_optimizer_state(optimizer, params)

    def full_weights(self, model: Any) -> dict[str, Any]:
        return full_weights(model)
