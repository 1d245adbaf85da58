"""The split's shared rules and reports: how many examples of a class an evaluation split takes,
which split a whole group joins, the overlap and leak reports, and whether a test split is big
enough to tell two models apart. rowsplit.py splits a prepared dataset with them (deterministic by
seed); tests/reference_split.py is the same split on lists of examples, kept for tests."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sized

from pydantic import BaseModel, ConfigDict

MAX_LISTED = 200  # leaked pairs listed in a report; counts stay exact

SPLITS = ("train", "validation", "test")


class OverlapReport(BaseModel):
    """Examples (by content) present in both an evaluation split and train; all zero when clean."""

    validation_in_train: int
    test_in_train: int
    test_prompts_in_train: int

    @property
    def clean(self) -> bool:
        return self.validation_in_train == 0 and self.test_in_train == 0 and self.test_prompts_in_train == 0


def _share(n: int, ratio: float) -> int:
    """Examples of one class for an evaluation split: a class with 3 or more examples is never
    left out of it by rounding, so every class gets scored."""
    share = round(n * ratio)
    return max(share, 1) if ratio > 0 and n >= 3 else share


def _open_split(out: Mapping[str, Sized], targets: dict[str, float], size: int) -> str:
    # A group joins an evaluation split while that brings its size closer to the target.
    for name in ("test", "validation"):
        if abs(len(out[name]) + size - targets[name]) < abs(len(out[name]) - targets[name]):
            return name
    return "train"


class LeakedPair(BaseModel):
    model_config = ConfigDict(extra="forbid")
    split: str  # the split the example was removed from ("train" when it repeated a given file's example)
    removed: str
    train_id: str | None  # None for exact prompt matches, where any training copy will do
    kind: str  # "exact" or "near"
    matches: str | None = None  # for split "train": the given validation/test example it repeats


class LeakReport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    exact: dict[str, int]
    near: dict[str, int]
    near_threshold: float | None
    pairs: list[LeakedPair]  # near pairs, capped at MAX_LISTED
    # A validation/test file the user gave is never cut: training examples repeating its prompts
    # leave train instead (split name -> training examples removed).
    removed_from_train: dict[str, int] = {}

    @property
    def removed(self) -> dict[str, int]:
        return {name: self.exact[name] + self.near.get(name, 0) for name in self.exact}


# ---------------------------------------------------------------- is the test split big enough?

SIGNIFICANCE_ALPHA = 0.05  # two-sided, as eval's McNemar test uses
POWER = 0.80
TARGET_GAIN = 0.10  # a 10-point gain in a 0/1 metric such as exact match or accuracy


def paired_sample_size(gain: float = TARGET_GAIN, alpha: float = SIGNIFICANCE_ALPHA, power: float = POWER) -> int:
    """Test examples a paired comparison of a 0/1 metric (McNemar) needs to detect `gain` with
    `power`: Connor's (1987) n = (z_a * sqrt(p) + z_b * sqrt(p - gain^2))^2 / gain^2, where p is the
    share of examples on which the two models disagree. We assume p = 2 * gain (say the tuned
    model fixes 15% of the answers and breaks 5%); more disagreement needs more examples."""
    from scipy.stats import norm

    discordant = min(1.0, 2 * gain)
    z_a, z_b = norm.ppf(1 - alpha / 2), norm.ppf(power)
    return math.ceil((z_a * math.sqrt(discordant) + z_b * math.sqrt(discordant - gain**2)) ** 2 / gain**2)


def min_significant_size(alpha: float = SIGNIFICANCE_ALPHA) -> int:
    """The fewest examples on which an exact two-sided McNemar test can reach p < alpha at all
    (every discordant pair going the same way): 2 * 0.5**n < alpha."""
    return math.floor(math.log2(2 / alpha)) + 1


def small_split_warning(name: str, n: int, given: bool = False) -> str | None:
    """A warning when `n` examples cannot show a 10-point difference between two models, with the size that could."""
    needed = paired_sample_size()
    if n >= needed:
        return None
    rule = (
        f"a paired comparison of a 0/1 metric (McNemar, 95% confidence, 80% power, assuming 20% of answers change) "
        f"needs about {needed} to detect a {TARGET_GAIN * 100:.0f}-point gain"
    )
    if n < min_significant_size():
        verdict = f"no difference between two models can be significant on {n} example(s)"
    else:
        detectable = next((g for g in range(11, 51) if paired_sample_size(g / 100) <= n), None)
        verdict = (
            f"on {n} examples only a gain of about {detectable} points or more can reliably be told from chance"
            if detectable
            else f"on {n} examples even a 50-point gain is likely to look like chance"
        )
    fix = f"add examples to your {name} file" if given else f"add examples, give --{name}-file, or raise the {name} share of --split"
    return f"small_{name}_split: {verdict}; {rule}. {fix[0].upper()}{fix[1:]}"
