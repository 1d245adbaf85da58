"""Data-parallel training over several processes (torch.distributed: gloo on CPU, nccl on GPU).

Every process builds the same seeded global batches and computes only its share of each
(collate.Batch.local). Each divides its summed token losses by the trained tokens of the whole
global step, so summing the gradients over processes gives exactly the one-process gradient:
`--nproc` changes the speed, never the result. batch_size is the global batch.

Process 0 owns the run folder and the registry; the others train in a throwaway folder, so
the training code stays the same whatever the process count. Processes are started by
`tunesmith train --nproc N` (which runs torch.distributed.run), by torchrun, or by
`accelerate launch` (also through `--accelerate-config`, see accel.py; an FSDP config shards
the model instead, see sharding.py): all set RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT.

Before `--nproc` or `--accelerate-config` starts any process, the launching process prepares the
data files into datasets and finds the model (trainer.prepared_for_launch), so bad input ends
there with one message and exit 2; the processes read the prepared datasets by name. Bad input
found inside the processes (a usage error, exit 2) makes the launch exit 2 as well.

What must agree across processes, and how:
- a budget stop (--max-time, --max-cost): each process's clock differs, so process 0 decides
  after every step and broadcasts it; all checkpoint and stop after the same step;
- resuming: process 0 picks the checkpoint (after cleaning the run folder) and broadcasts its
  path; every process restores the same weights, optimiser and schedule state (identical in all
  processes), while the RNG state and CPU thread count, which are per process, are saved for
  each rank and restored by rank (a resume on another process count keeps process 0's RNG);
- --dry-run starts no processes: the estimate is one process's.
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from tunesmith.ui import console


def launched() -> bool:
    """Started by a launcher as one of several processes."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device_kind: str = "auto") -> None:
    """Join the process group a launcher set up (a no-op for a single process)."""
    if not launched() or dist.is_initialized():
        return
    use_cuda = torch.cuda.is_available() and device_kind != "cpu"
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return rank_and_world()[0] == 0


def share_from_main(value: Any) -> Any:
    """Process 0's value, on every process (after process 0 got there: a barrier too)."""
    if rank_and_world()[1] == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def same_start(params: list[torch.Tensor]) -> None:
    """Every process starts from process 0's trainable weights, whatever each initialised."""
    if rank_and_world()[1] == 1:
        return
    with torch.no_grad():
        for param in params:
            dist.broadcast(param.data, src=0)


def sum_gradients(params: list[torch.Tensor]) -> None:
    """Sum (not average) the gradients over processes: each already divided by the global token count.
    One flat buffer, so one collective per step. A process with an empty share adds zeros."""
    if rank_and_world()[1] == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for param, grad in zip(params, grads):
        n = grad.numel()
        param.grad = flat[offset : offset + n].view_as(param).clone()
        offset += n


def global_sum(value: float, device: Any = "cpu") -> float:
    if rank_and_world()[1] == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return float(tensor.item())


def worker_folder() -> Path:
    """Where a process other than 0 writes what process 0 writes into the run folder; discarded."""
    return Path(tempfile.mkdtemp(prefix=f"tunesmith-rank{rank_and_world()[0]}-"))


def finish() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def per_process(value: Any) -> list[Any]:
    """Every process's value, in rank order (on every process): for state that differs per process."""
    if rank_and_world()[1] == 1:
        return [value]
    values: list[Any] = [None] * rank_and_world()[1]
    dist.all_gather_object(values, value)
    return values


def own_share(values: list[Any] | None, single: Any) -> Any:
    """This process's entry of a per_process list saved by a run with as many processes; `single` for
    one process resuming a checkpoint written before state was kept per process; otherwise None
    (a run resumed on another process count cannot repeat the old streams anyway)."""
    rank, world = rank_and_world()
    if values is not None and len(values) == world:
        return values[rank]
    return single if values is None and world == 1 else None


def budget_args(budget: Any) -> list[str]:
    """The command-line flags that give a launched process the same budget."""
    if budget is None:
        return []
    args = ["--max-time", repr(budget.max_seconds)] if budget.max_seconds is not None else []
    if budget.max_cost is not None:
        args += ["--max-cost", repr(budget.max_cost)]
    if budget.price_per_hour is not None:
        args += ["--price-per-hour", repr(budget.price_per_hour)]
    return args


def launch(train_args: list[str], nproc: int, env: dict[str, str] | None = None) -> int:
    """Run `tunesmith train *train_args` in nproc processes on this machine (torch.distributed.run, in
    this process) and return the exit code: 2 when the first process to fail exited 2, i.e. a usage
    error whose message it printed, so bad input found inside the processes ends as it does in one
    (torch.distributed.run would exit 1 with its own traceback). `env`: defaults for the processes'
    environment, over `thread_defaults`."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    defaults = {**thread_defaults(nproc), **(env or {})}
    added = [name for name in defaults if name not in os.environ]
    os.environ.update({name: defaults[name] for name in added})  # the processes inherit this environment
    # torch.distributed.run logs every failure (an E line per process, W lines as it stops the others);
    # the processes print their own errors, so one line of ours says which failed and how.
    elastic_logs = logging.getLogger("torch.distributed.elastic")
    level = elastic_logs.level
    elastic_logs.setLevel(logging.CRITICAL)  # setLevel, not the attribute: it clears the child loggers' cached levels
    try:
        run(parse_args(torchrun_args(train_args, nproc)))
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        if failure.exitcode == 2:
            return 2
        console.print(f"[red]error:[/red] training process {rank} of {nproc} failed ({_exit_reason(failure.exitcode)}); the others were stopped")
        return 1
    finally:
        elastic_logs.setLevel(level)
        for name in added:
            os.environ.pop(name, None)
    return 0


def thread_defaults(nproc: int) -> dict[str, str]:
    """On CPUs the cores split between the processes (torch.distributed.run and accelerate give each one thread)."""
    return {} if torch.cuda.is_available() else {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nproc))}


def _exit_reason(exitcode: int) -> str:
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


def torchrun_args(train_args: list[str], nproc: int) -> list[str]:
    return ["--standalone", f"--nproc_per_node={nproc}", "-m", "tunesmith", "train", *train_args]
