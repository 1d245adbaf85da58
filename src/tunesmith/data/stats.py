"""What a dataset holds before training on it: sizes, roles, turns, labels, and with a tokenizer
the token lengths as the model's own chat template renders them, the tokens one epoch trains on,
and (given a measured speed) how long an epoch will take."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from tunesmith.data.example import Example

NO_LIMIT = 1 << 30  # stats measure whole examples; truncation is the trainer's decision


class Summary(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min: float
    mean: float
    median: float
    p95: float
    max: float


class TokenStats(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lengths: Summary
    total: int  # every token of every example: what the forward and backward passes process
    trained: int  # tokens that carry loss (assistant turns and their end-of-turn token)


class SplitStats(BaseModel):
    model_config = ConfigDict(extra="forbid")
    examples: int
    roles: dict[str, int]  # messages per role
    turns: Summary | None  # user and assistant messages per example; system prompts are not turns
    labels: dict[str, int]
    tokens: TokenStats | None = None


class DatasetStats(BaseModel):
    model_config = ConfigDict(extra="forbid")
    counts: dict[str, int]
    splits: dict[str, SplitStats]
    token_lengths: dict[str, list[int]]  # per split, for the histogram; empty without a tokenizer
    train_tokens_per_epoch: int | None = None
    train_trained_tokens_per_epoch: int | None = None
    seconds_per_epoch: float | None = None


def dataset_stats(examples_by_split: Mapping[str, Iterable[Example]], tokenizer: Any = None, *, seconds_per_token: float | None = None) -> DatasetStats:
    """Each split is read once, example by example: a split may be a generator over a large file."""
    lengths: dict[str, list[int]] = {}
    splits = {}
    for name, examples in examples_by_split.items():
        splits[name], split_lengths = _split_stats(examples, tokenizer)
        if tokenizer is not None:
            lengths[name] = split_lengths
    train = splits.get("train")
    total = train.tokens.total if train and train.tokens else None
    return DatasetStats(
        counts={name: split.examples for name, split in splits.items()},
        splits=splits,
        token_lengths=lengths,
        train_tokens_per_epoch=total,
        train_trained_tokens_per_epoch=train.tokens.trained if train and train.tokens else None,
        # Compute scales with every position processed, not only the trained ones.
        seconds_per_epoch=total * seconds_per_token if total is not None and seconds_per_token is not None else None,
    )


def summarise(values: list[float]) -> Summary | None:
    if not values:
        return None
    ordered = sorted(values)
    # Nearest-rank p95: a length that really occurs, as a max_seq_len choice needs.
    p95 = ordered[max(0, -(-95 * len(ordered) // 100) - 1)]
    return Summary(min=ordered[0], mean=statistics.fmean(ordered), median=statistics.median(ordered), p95=p95, max=ordered[-1])


def _split_stats(examples: Iterable[Example], tokenizer: Any) -> tuple[SplitStats, list[int]]:
    roles: Counter[str] = Counter()
    labels: Counter[str] = Counter()
    turns: list[int] = []
    lengths: list[int] = []
    trained = 0
    if tokenizer is not None:
        # The trainer's own encoding, so "trained tokens" here is exactly what training will count.
        from tunesmith.chat_template import encode
    for example in examples:
        roles.update(m.role for m in example.messages)
        if example.label is not None:
            labels[example.label] += 1
        turns.append(sum(m.role != "system" for m in example.messages))
        if tokenizer is not None:
            encoded = encode(tokenizer, example, NO_LIMIT)
            lengths.append(len(encoded.input_ids))
            trained += encoded.n_trained
    tokens = _token_stats(lengths, trained) if tokenizer is not None else None
    stats = SplitStats(examples=len(turns), roles=dict(sorted(roles.items())), turns=summarise(turns), labels=dict(labels.most_common()), tokens=tokens)
    return stats, lengths


def _token_stats(lengths: list[int], trained: int) -> TokenStats | None:
    summary = summarise([float(n) for n in lengths])
    return None if summary is None else TokenStats(lengths=summary, total=sum(lengths), trained=trained)


def plot_length_histogram(stats_or_lengths: DatasetStats | dict[str, list[int]] | list[int], path: Path) -> Path:
    """Token lengths per split as overlaid histograms: where to set max_seq_len, at a glance."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    if isinstance(stats_or_lengths, DatasetStats):
        series = stats_or_lengths.token_lengths
    elif isinstance(stats_or_lengths, dict):
        series = stats_or_lengths
    else:
        series = {"all": list(stats_or_lengths)}
    fig, ax = plt.subplots(figsize=(7, 4))
    try:
        for name, lengths in series.items():
            if lengths:
                ax.hist(lengths, bins=min(50, max(5, len(set(lengths)))), alpha=0.6, label=f"{name} ({len(lengths)})")
        ax.set_xlabel("tokens per example (chat template applied)")
        ax.set_ylabel("examples")
        ax.legend()
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path


def print_stats(stats: DatasetStats) -> None:
    from rich.table import Table

    from tunesmith.ui import out

    table = Table(title="dataset")
    for column in ("split", "examples", "roles", "turns min/mean/max", "tokens min/median/p95/max", "tokens", "trained tokens"):
        table.add_column(column, justify="left" if column in ("split", "roles") else "right")
    for name, split in stats.splits.items():
        table.add_row(name, str(split.examples), _roles(split), _turns(split), *_tokens(split))
    out.print(table)
    _print_labels(stats)
    if stats.seconds_per_epoch is not None:
        out.print(f"estimated training time per epoch: {_duration(stats.seconds_per_epoch)} ({stats.train_tokens_per_epoch:,} tokens)")


def _roles(split: SplitStats) -> str:
    return ", ".join(f"{role} {n}" for role, n in split.roles.items())


def _turns(split: SplitStats) -> str:
    return "-" if split.turns is None else f"{split.turns.min:g} / {split.turns.mean:.1f} / {split.turns.max:g}"


def _tokens(split: SplitStats) -> tuple[str, str, str]:
    if split.tokens is None:
        return "-", "-", "-"
    s = split.tokens.lengths
    return f"{s.min:g} / {s.median:g} / {s.p95:g} / {s.max:g}", f"{split.tokens.total:,}", f"{split.tokens.trained:,}"


def _print_labels(stats: DatasetStats) -> None:
    from rich.table import Table

    from tunesmith.ui import out

    labels = sorted({label for split in stats.splits.values() for label in split.labels})
    if not labels:
        return
    table = Table(title="labels")
    table.add_column("label")
    for name in stats.splits:
        table.add_column(name, justify="right")
    for label in labels:
        table.add_row(label, *(str(split.labels.get(label, 0)) for split in stats.splits.values()))
    out.print(table)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"
