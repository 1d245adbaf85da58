"""Estimates without a run: `train --dry-run` and the training speed `data stats --model` reports."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from tunesmith.chat_template import encode_all
from tunesmith.config import ModelSpec, RunSpec, TrainSpec
from tunesmith.data.example import Example
from tunesmith.errors import UserError
from tunesmith.models.loading import load_model
from tunesmith.models.methods import apply_method
from tunesmith.train.run.estimate import TrainEstimate, calibrate
from tunesmith.train.tasks import task_for
from tunesmith.train.tasks.causal_lm import CAUSAL_LM


def _splits_read_only(spec: RunSpec, workspace: Any, dataset: str | None, path: Path | None) -> dict[str, list[Example]]:
    """A dataset's splits without registering anything: a file is prepared in memory only."""
    if path is None:
        from tunesmith.data.dataset import load_dataset

        return load_dataset(workspace, dataset or "").splits
    from tunesmith.data.prepare import length_limit_for, run_steps

    with tempfile.TemporaryDirectory(prefix="tunesmith-dry-run-") as workdir:
        prepared = run_steps(path, spec.data.format, spec.data.seed, spec.data.split_ratios, spec.data.prepare, Path(workdir), length_limit_for(spec))
        try:
            splits = {name: prepared.rows.examples(rows) for name, rows in prepared.splits.items()}
            splits["train"] = splits.get("train", []) + list(prepared.extra_train)
            return splits
        finally:
            prepared.rows.close()


def dry_run(spec: RunSpec, workspace: Any) -> TrainEstimate:
    """`train --dry-run`: the run's own model, settings and batches, timed and printed; no run folder, nothing registered."""
    from tunesmith.train.continued import continue_from

    spec = continue_from(spec, workspace)  # a bad --from is refused here as in training; the estimate times the parent's base
    splits = _splits_read_only(spec, workspace, spec.data.dataset, spec.data.path)
    if spec.train.task == "causal_lm":
        splits = {**splits, "train": splits["train"] + _first_epoch_replay(spec, workspace, len(splits["train"]))}
    return task_for(spec.train.task).estimate(spec, splits, spec.data.dataset or str(spec.data.path))


def _first_epoch_replay(spec: RunSpec, workspace: Any, n_train: int) -> list[Example]:
    """The examples the run's first epoch mixes in (data.replay, data.keep_general), drawn as the loop
    draws them, so the estimate's steps and time are the run's. keep_general's answers are generated
    here when the workspace has none for this base yet, and cached for the run."""
    from tunesmith.train.continued import base_path_of
    from tunesmith.train.keep_general import self_distilled
    from tunesmith.train.settings import replay_count, replay_draws

    pools = []
    replay = spec.data.replay
    if replay is not None:
        pools.append((_splits_read_only(spec, workspace, replay.dataset, replay.path)["train"], replay.fraction))
    if spec.data.keep_general is not None:
        pools.append((self_distilled(spec.model, base_path_of(spec), spec.data.keep_general, workspace.home), spec.data.keep_general.fraction))
    return replay_draws([(pool, replay_count(n_train, fraction)) for pool, fraction in pools], spec.train.seed, 1)


def seconds_per_token(model_name: str, examples: list[Example], spec: TrainSpec | None = None) -> float:
    """Training seconds per token of the default method on these examples (for `data stats`)."""
    spec = spec or TrainSpec()
    model, tokenizer, device = load_model(ModelSpec(name=model_name))
    model = apply_method(model, spec)
    items, _ = encode_all(tokenizer, examples[: spec.batch_size * 16], spec.max_seq_len, spec.train_on)
    if not items:
        raise UserError("no example has a token left to learn", fix=f"check the assistant turns, or raise train.max_seq_len (now {spec.max_seq_len})")
    return calibrate(model, tokenizer, device, spec, items, [], CAUSAL_LM)["seconds_per_token"]
