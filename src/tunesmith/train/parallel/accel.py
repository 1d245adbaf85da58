"""`tunesmith train --accelerate-config FILE`: an accelerate YAML (as `accelerate config` writes it)
read, checked, and handed to `accelerate launch`, which starts the processes and tells each one,
through its environment, how to train.

What each distributed_type becomes inside the processes:
- NO, MULTI_CPU, MULTI_GPU (and the other MULTI_*): tunesmith's own exact data parallelism
  (distributed.py); the result equals one process. A CPU config without mpirun_config is
  started with torch.distributed.run, since accelerate would run it as a single process.
- FSDP: the model sharded with torch FSDP2 (`fully_shard`, sharding.py), the same primitive
  accelerate uses for `fsdp_version: 2`, applied by tunesmith itself because accelerate 1.15 turns
  FSDP off whenever processes run on CPU; only `fsdp_version: 2` is taken.
- DEEPSPEED: ZeRO stage 1 or 2 through `deepspeed.initialize`, applied by tunesmith itself (zero.py)
  because accelerate 1.15 turns DeepSpeed off on CPU too. The settings come from the config's
  `deepspeed_config` (zero_stage, ...) or the DeepSpeed JSON its `deepspeed_config_file` names,
  checked here before any process starts. Tested on CPU (gloo, deepspeed 0.19.8): 2 ZeRO-2
  processes give the losses and adapter of 1 process; a ZeRO-1 run stopped and resumed (under
  DeepSpeed, or in one process) equals 1 uninterrupted process; a NaN loss fails the run. Not run:
  GPUs, several machines. Refused, with the field named: stage 0 and 3, offloading, mixed
  precision, a DeepSpeed optimizer/scheduler, batch sizes or accumulation other than tunesmith's,
  gradient_clipping other than train.max_grad_norm; qlora, prompt/prefix tuning, classification.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from tunesmith.config import spec_to_yaml
from tunesmith.errors import UserError
from tunesmith.models.methods import method_for
from tunesmith.train.parallel import distributed, zero

DATA_PARALLEL = {"NO", "MULTI_CPU", "MULTI_GPU", "MULTI_NPU", "MULTI_XPU", "MULTI_MLU", "MULTI_MUSA", "MULTI_SDAA", "MULTI_HPU"}
# FSDP settings accelerate may write that change what would be trained or saved, and which the
# FSDP2 path does not implement: refused by name rather than silently ignored.
UNSUPPORTED_FSDP = {
    "fsdp_offload_params": (False, "false"),
    "fsdp_activation_checkpointing": (False, "false"),
}
WRITE_ONE = "write one with `accelerate config --config_file FILE`, or see docs/multi-process.md"


@dataclass(frozen=True)
class AccelerateConfig:
    path: Path
    mode: Literal["ddp", "fsdp", "deepspeed"]
    num_processes: int
    # accelerate 1.15 starts CPU data parallelism only through mpirun (mpirun_config); without it,
    # `accelerate launch` runs one process whatever num_processes says.
    cpu_without_mpirun: bool = False
    zero: Any = None  # zero.ZeroSettings for a DEEPSPEED config


def read_accelerate_config(path: Path) -> AccelerateConfig:
    where = str(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"cannot read the accelerate config ({exc.strerror or exc})", where=where, fix=WRITE_ONE) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise UserError(f"not valid YAML ({getattr(exc, 'problem', None) or exc})", where=where + line, fix=WRITE_ONE) from None
    if not isinstance(data, dict):
        raise UserError("an accelerate config is a YAML mapping (distributed_type: ..., num_processes: ...)", where=where, fix=WRITE_ONE)
    kind = str(data.get("distributed_type", "NO")).upper()
    processes = data.get("num_processes", 1)
    if not isinstance(processes, int) or isinstance(processes, bool) or processes < 1:
        raise UserError(f"num_processes must be a whole number of at least 1 (got {processes!r})", where=f"{where}: num_processes", fix="e.g. num_processes: 2")
    if kind == "DEEPSPEED":
        return AccelerateConfig(path, "deepspeed", processes, zero=_check_deepspeed(data, where))
    if kind == "FSDP":
        _check_fsdp(data.get("fsdp_config") or {}, where)
        return AccelerateConfig(path, "fsdp", processes)
    if kind in DATA_PARALLEL:
        on_cpu = kind == "MULTI_CPU" or data.get("use_cpu") is True
        return AccelerateConfig(path, "ddp", processes, on_cpu and not data.get("mpirun_config") and data.get("num_machines", 1) == 1)
    raise UserError(
        f"distributed_type {data.get('distributed_type')!r} is not one tunesmith runs",
        where=f"{where}: distributed_type",
        fix="use NO, MULTI_CPU, MULTI_GPU, FSDP or DEEPSPEED",
    )


def _check_deepspeed(data: dict, where: str) -> Any:

    if data.get("use_cpu") is True:
        raise UserError(
            "use_cpu: true makes `accelerate launch` start one process without DeepSpeed",
            where=f"{where}: use_cpu",
            fix="remove use_cpu: on a machine without GPUs the DeepSpeed processes run on CPU anyway",
        )
    precision = str(data.get("mixed_precision", "no")).lower()
    if precision not in ("no", "none", "false"):  # YAML reads an unquoted no as false
        raise UserError(
            f"mixed_precision {precision} is not supported with DeepSpeed: the model trains in its own dtype (model.dtype)",
            where=f"{where}: mixed_precision",
            fix="set mixed_precision: 'no' and choose model.dtype in the run config",
        )
    return zero.from_accelerate(data.get("deepspeed_config"), where)


def _check_fsdp(fsdp: Any, where: str) -> None:
    if not isinstance(fsdp, dict):
        raise UserError("fsdp_config must be a mapping", where=f"{where}: fsdp_config", fix="e.g. fsdp_config: {fsdp_version: 2}")
    version = fsdp.get("fsdp_version", 1)
    if str(version) != "2":
        raise UserError(
            f"fsdp_version {version} (FSDP1) is not supported; tunesmith shards with FSDP2",
            where=f"{where}: fsdp_config.fsdp_version",
            fix="set fsdp_config.fsdp_version: 2 (the same sharding, newer API)",
        )
    for key, allowed in UNSUPPORTED_FSDP.items():
        if key in fsdp and fsdp[key] not in allowed:
            raise UserError(
                f"{key}: {fsdp[key]} is not supported by tunesmith's FSDP path", where=f"{where}: fsdp_config.{key}", fix=f"remove {key} or set it to false"
            )


def check_spec(config: AccelerateConfig | str, spec: Any) -> None:
    """A sharded model needs a method whose weights FSDP can split and gather back; DeepSpeed runs
    the methods it was tested with."""
    mode = config if isinstance(config, str) else config.mode
    keep = spec.data.keep_general
    if mode in ("fsdp", "deepspeed") and keep is not None and keep.target == "distribution":
        # The base's forward pass runs only in the passes that hold a distilled example, and a sharded
        # model's processes must all run the same passes, or they wait on each other for ever.
        raise UserError(
            f"data.keep_general.target distribution does not run on a model sharded with {mode}",
            where="data.keep_general.target",
            fix="use target: answer with a sharded model, or --nproc N without an accelerate config",
        )
    if mode == "deepspeed":
        _check_deepspeed_spec(config, spec)
    if mode != "fsdp":
        return
    where = "train.method" if isinstance(config, str) else f"train.method (with FSDP from {config.path})"
    cfg = spec.train
    method = method_for(cfg.method)
    if method.quantized:
        raise UserError(
            f"{cfg.method} cannot be sharded with FSDP: its 4-bit base weights are not plain tensors FSDP can split",
            where=where,
            fix="use method lora with FSDP (the base is sharded instead of quantised), or qlora without FSDP (--nproc N)",
        )
    if not method.shardable:
        raise UserError(f"{cfg.method} is not supported with FSDP", where=where, fix="use lora, dora or full with FSDP, or --nproc N without FSDP")
    if cfg.task == "classification":
        raise UserError("classification training does not run with FSDP", where="train.task", fix="drop the accelerate config, or use --nproc N")
    if cfg.generation_eval is not None or cfg.forgetting_every_steps is not None:
        raise UserError(
            "generation during training (generation_eval, forgetting_every_steps) does not run on a sharded model",
            where="train.generation_eval / train.forgetting_every_steps",
            fix="drop them for this run; `tunesmith eval RUN` scores the result",
        )


def _check_deepspeed_spec(config: AccelerateConfig | str, spec: Any) -> None:
    where = "train.method" if isinstance(config, str) else f"train.method (with DeepSpeed from {config.path})"
    cfg = spec.train
    if not method_for(cfg.method).shardable:
        raise UserError(
            f"{cfg.method} is not supported with DeepSpeed (not tested)",
            where=where,
            fix="use lora, dora or full with DeepSpeed, or --nproc N without DeepSpeed",
        )
    if cfg.task == "classification":
        raise UserError("classification training does not run with DeepSpeed", where="train.task", fix="drop the accelerate config, or use --nproc N")
    if cfg.generation_eval is not None or cfg.forgetting_every_steps is not None:
        raise UserError(
            "generation during training (generation_eval, forgetting_every_steps) has not been tested with DeepSpeed",
            where="train.generation_eval / train.forgetting_every_steps",
            fix="drop them for this run; `tunesmith eval RUN` scores the result",
        )
    if not isinstance(config, str) and config.zero is not None:
        zero.check_clipping(config.zero, cfg.max_grad_norm)


def mode_from_env() -> Literal["ddp", "fsdp", "deepspeed"]:
    """What `accelerate launch` asked this process for."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return "deepspeed"
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return "fsdp"
    return "ddp"


def check_env(spec: Any) -> Literal["ddp", "fsdp", "deepspeed"]:
    """Inside a launched process: refuse what the accelerate config asked for and tunesmith cannot do."""
    mode = mode_from_env()
    if mode == "deepspeed":
        from tunesmith.models.loading import import_deepspeed_quietly

        zero.check_clipping(zero.from_env(), spec.train.max_grad_norm)  # a process started by hand skipped the launcher's checks
        zero.require_installed("ACCELERATE_USE_DEEPSPEED")
        import_deepspeed_quietly()  # now, before transformers or accelerate import it with its logger on stdout
    if mode == "fsdp" and os.environ.get("FSDP_VERSION", "1") != "2":
        raise UserError(
            "FSDP1 is not supported; tunesmith shards with FSDP2", where="FSDP_VERSION", fix="set fsdp_config.fsdp_version: 2 in the accelerate config"
        )
    check_spec(mode, spec)
    return mode


def launch_command(config: AccelerateConfig, train_args: list[str], nproc: int = 1) -> list[str]:
    processes = ["--num_processes", str(nproc)] if nproc > 1 else []
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config.path), *processes, "-m", "tunesmith", "train", *train_args]


def launch(config: AccelerateConfig, train_args: list[str], nproc: int = 1) -> int:
    import torch

    from tunesmith.ui import console

    processes = nproc if nproc > 1 else config.num_processes
    if config.mode == "deepspeed":  # checked last, so a config's mistakes are reported whether or not it is installed
        zero.require_installed(f"{config.path}: distributed_type")
    if config.cpu_without_mpirun and processes > 1:
        console.print(
            f"{config.path}: CPU processes without mpirun, which `accelerate launch` would run as one; starting {processes} with torch.distributed.run"
        )
    # said, not guessed: DeepSpeed warns on stdout (the launcher's too) when it falls back to CPU
    defaults = {"DS_ACCELERATOR": "cpu"} if config.mode == "deepspeed" and not torch.cuda.is_available() else {}

    if config.cpu_without_mpirun:
        return distributed.launch(train_args, processes, defaults)
    env = {**distributed.thread_defaults(processes), **defaults, **os.environ}
    return subprocess.run(launch_command(config, train_args, nproc), env=env, check=False).returncode


def launch_spec(spec: Any, nproc: int, extra: list[str] | None = None, accelerate_config: Any = None) -> int:
    """Run this resolved spec in nproc processes (or as the accelerate config says): every process reads the same config file."""
    with tempfile.TemporaryDirectory(prefix="tunesmith-launch-") as folder:
        path = Path(folder) / "run.yaml"
        path.write_text(spec_to_yaml(spec), encoding="utf-8")
        args = ["--config", str(path), *(extra or [])]
        if accelerate_config is not None:
            return launch(accelerate_config, args, nproc)
        return distributed.launch(args, nproc)
