"""Resumable checkpoints: the trained weights (safetensors, loadable on their own) plus
trainer_state.pt, everything the loop needs to continue exactly where it stopped: optimiser and
scheduler state, RNG states, the step counter (which fixes the position inside the epoch,
because batches are a pure function of seed and epoch) and the validation history."""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import signal
from pathlib import Path
from typing import Any

import torch

from tunesmith.errors import UserError
from tunesmith.models.loading import import_deepspeed_quietly
from tunesmith.ui import console

STATE_FILE = "trainer_state.pt"
_STEP_FOLDER = re.compile(r"^step-(\d+)$")


def test_kill(point: str, step: int) -> None:
    """Test hook: TUNESMITH_TEST_KILL_AT=step:7 (inside optimiser step 7) or ckpt:12 (inside the
    checkpoint write of step 12) SIGKILLs this process, as a power cut would; enospc:12 fails that
    write as a full disk does; oom:7 makes an allocation inside step 7 that no machine can satisfy,
    as a batch too big for the GPU does. Inert unless set."""
    wanted = os.environ.get("TUNESMITH_TEST_KILL_AT")
    if wanted == f"{point}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)
    if point == "step" and wanted == f"oom:{step}":
        torch.empty(1 << 60, dtype=torch.uint8)  # an exabyte: the allocator itself refuses, as a real shortage would
    if point == "ckpt" and wanted == f"enospc:{step}":  # a disk that fills up mid-checkpoint, where no small filesystem can be mounted
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "trainer_state.pt")


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step}"


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    model: Any,
    tokenizer: Any,
    run_dir: Path,
    step: int,
    eot_ids: list[int],
    state: dict[str, Any],
    files: dict[str, str] | None = None,
    weights: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Written to a temporary folder and renamed, so a crash never leaves a half checkpoint to be picked.
    `files`: extra text files for the checkpoint; `weights`: the gathered full weights of a sharded
    model (its own state dict holds only shards)."""
    target = checkpoint_dir(run_dir, step)
    staging = target.with_name(f".{target.name}.tmp")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(staging, ignore_errors=True)  # left by a crash mid-save
    try:
        _write_checkpoint(model, tokenizer, staging, step, eot_ids, state, files, weights)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except Exception as exc:
        # A failed write (a full disk, most often) must not leave a half checkpoint filling the disk,
        # nor a library's raw error: one line that says what happened, where, and how to go on.
        failure = _write_failure(exc, run_dir, staging, step)
        if failure is None:
            raise
        raise failure from None
    return target


def _write_failure(exc: Exception, run_dir: Path, staging: Path, step: int) -> Any:
    """The TrainingFailed to report for a write that failed (None for an error that is not a write's)."""
    from tunesmith.errors import TrainingFailed

    try:
        free = shutil.disk_usage(staging.parent).free  # measured before the partial checkpoint is removed
    except OSError:
        free = None
    shutil.rmtree(staging, ignore_errors=True)
    chain, seen = [], exc
    while seen is not None and len(chain) < 8:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    # torch.save and safetensors report a full disk in their own words ("file write failed"), so the
    # free space decides when no errno says it
    disk_full = any(getattr(e, "errno", None) == errno.ENOSPC or "No space left" in str(e) for e in chain) or (free is not None and free < 1 << 20)
    run = run_dir.name
    if not disk_full and not any(isinstance(e, OSError) for e in chain):
        return None
    if disk_full:
        return TrainingFailed(f"disk full while writing checkpoint step {step} under {run_dir}", fix=f"free space and `tunesmith train --resume {run}`")
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return TrainingFailed(
        f"could not write checkpoint step {step} under {run_dir}: {first}", fix=f"make the folder writable, then `tunesmith train --resume {run}`"
    )


def _write_checkpoint(
    model: Any,
    tokenizer: Any,
    staging: Path,
    step: int,
    eot_ids: list[int],
    state: dict[str, Any],
    files: dict[str, str] | None,
    weights: dict[str, torch.Tensor] | None,
) -> None:
    import_deepspeed_quietly()
    model.save_pretrained(staging, safe_serialization=True, **({"state_dict": weights} if weights is not None else {}))
    tokenizer.save_pretrained(staging)
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        generation.eos_token_id = eot_ids
        generation.pad_token_id = tokenizer.pad_token_id
        generation.save_pretrained(staging)
    for name, text in (files or {}).items():
        (staging / name).write_text(text, encoding="utf-8")
    test_kill("ckpt", step)
    torch.save(state, staging / STATE_FILE)


def complete_checkpoints(run_dir: Path) -> dict[int, Path]:
    """Finished checkpoints by step; staging folders (.step-N.tmp) never match."""
    found = {}
    for folder in (run_dir / "checkpoints").glob("step-*"):
        match = _STEP_FOLDER.match(folder.name)
        if match and (folder / STATE_FILE).is_file():
            found[int(match.group(1))] = folder
    return found


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = complete_checkpoints(run_dir)
    return found[max(found)] if found else None


DAMAGED_CHECKPOINT_FIX = "resume falls back to an earlier intact checkpoint; with none left, start the run again"


def checkpoint_damage(folder: Path) -> str | None:
    """Why a finished checkpoint cannot be resumed from (a file truncated or garbled after it was
    written: disk trouble, a bad copy), or None. Reads the trainer state and the weights' headers."""
    from tunesmith.files import load_torch, safetensors_damage

    try:
        load_torch(folder / STATE_FILE, fix=DAMAGED_CHECKPOINT_FIX)
    except UserError as exc:
        return str(exc)
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        return f"{folder} holds no weights (*.safetensors)"
    for file in weights:
        reason = safetensors_damage(file)
        if reason is not None:
            return f"{file} is damaged ({reason})"
    return None


def latest_intact_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint that reads back whole; each damaged one skipped is named, with why."""
    found = complete_checkpoints(run_dir)
    for step in sorted(found, reverse=True):
        reason = checkpoint_damage(found[step])
        if reason is None:
            return found[step]
        earlier = [s for s in found if s < step]
        then = f"trying step-{max(earlier)}" if earlier else "no earlier checkpoint is left"
        console.print(f"[yellow]checkpoint step-{step} is damaged[/]: {reason}; {then}", soft_wrap=True)
    return None


def load_state(folder: Path) -> dict[str, Any]:
    from tunesmith.files import load_torch

    return load_torch(folder / STATE_FILE, fix=DAMAGED_CHECKPOINT_FIX)


def restore_weights(model: Any, folder: Path) -> None:
    """Load a checkpoint's trained weights into a model built the same way as the run's."""
    from tunesmith.files import load_safetensors

    weights: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")):
        weights.update(load_safetensors(file, fix=DAMAGED_CHECKPOINT_FIX))
    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, weights)
        unexpected = getattr(result, "unexpected_keys", [])
    else:
        unexpected = model.load_state_dict(weights, strict=False).unexpected_keys
    if not weights or unexpected:
        raise UserError(
            f"checkpoint {folder} does not fit this model ({len(unexpected)} unknown weights)", fix="resume with the base model the run started from"
        )


def prune_checkpoints(run_dir: Path, keep: set[int]) -> None:
    """Full-model checkpoints are large: keep only the best and the latest (and no staging leftovers)."""
    folder = run_dir / "checkpoints"
    for child in folder.iterdir() if folder.is_dir() else ():
        match = _STEP_FOLDER.match(child.name)
        if (match and int(match.group(1)) not in keep) or (child.name.startswith(".step-") and child.name.endswith(".tmp")):
            shutil.rmtree(child, ignore_errors=True)


def truncate_metrics(path: Path, last_step: int) -> list[dict]:
    """Drop the records written after the checkpoint a run resumes from: they will be written again."""
    if not path.is_file():
        return []
    kept = [r for r in map(_parse, path.read_text(encoding="utf-8").splitlines()) if r is not None and r.get("step", 0) <= last_step]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
    os.replace(tmp, path)
    return kept


def _parse(line: str) -> dict | None:
    try:
        return json.loads(line)
    except json.JSONDecodeError:  # the half-written last line of a killed run
        return None
