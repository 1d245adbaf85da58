"""The loss-curve PNG in the run folder."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402


def draw_loss(ax, records: list[dict], x: str) -> bool:
    """Training and validation loss against `x` (step or epoch) on `ax`; False when there is none."""
    train = [(r[x], r["loss"]) for r in records if "loss" in r and x in r]
    val = [(r[x], r["val_loss"]) for r in records if r.get("val_loss") is not None and x in r]
    if not train and not val:
        return False
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss")
    ax.set_xlabel(x)
    ax.set_ylabel("loss per trained token")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    return True


def plot_loss(history: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    draw_loss(ax, history, "epoch")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
