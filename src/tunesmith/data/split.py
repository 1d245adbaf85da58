"""Deterministic train/validation/test split by seed, and the check that no test example leaked."""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict

from pydantic import BaseModel, ConfigDict

from tunesmith.data.example import Example
from tunesmith.errors import UserError

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


def _rank(example: Example, seed: int) -> str:
    # Ranking by a keyed hash of the content makes the split independent of file order and
    # stable when examples are added: an example keeps its split.
    return hashlib.sha256(f"{seed}:{example.content_key()}".encode()).hexdigest()


def split_examples(
    examples: list[Example], ratios: tuple[float, float, float], seed: int, group_by: str | None = None
) -> dict[str, list[Example]]:
    """Split per label when examples carry one, so every class appears in every split; with
    `group_by`, whole groups (examples sharing `meta[group_by]`) go to one split instead."""
    if group_by is not None:
        return _split_groups(examples, ratios, seed, group_by)
    groups: dict[str | None, list[Example]] = defaultdict(list)
    for example in examples:
        groups[example.label].append(example)
    out: dict[str, list[Example]] = {name: [] for name in SPLITS}
    for label in sorted(groups, key=lambda x: (x is None, x or "")):
        ordered = sorted(groups[label], key=lambda e: _rank(e, seed))
        n_val, n_test = (_share(len(ordered), r) for r in ratios[1:])
        out["test"].extend(ordered[:n_test])
        out["validation"].extend(ordered[n_test : n_test + n_val])
        out["train"].extend(ordered[n_test + n_val :])
    for name in SPLITS:
        out[name].sort(key=lambda e: _rank(e, seed))
    return out


def _share(n: int, ratio: float) -> int:
    """Examples of one class for an evaluation split: a class with 3 or more examples is never
    left out of it by rounding, so every class gets scored."""
    share = round(n * ratio)
    return max(share, 1) if ratio > 0 and n >= 3 else share


def _group_key(example: Example, group_by: str) -> str:
    if group_by not in example.meta or example.meta[group_by] is None:
        raise UserError(
            f"example '{example.id}' has no meta.{group_by}, so it cannot be kept with its group",
            where=f"example {example.id}",
            fix=f"give every example a meta.{group_by} value, or split without --group-by",
        )
    return str(example.meta[group_by])


def _split_groups(examples: list[Example], ratios: tuple[float, float, float], seed: int, group_by: str) -> dict[str, list[Example]]:
    """Whole groups in a seeded-hash order fill test, then validation, then train. A group is
    never cut, so split sizes only approach the ratios and label stratification is lost: a
    conversation or user split across train and test would let the test measure memory."""
    groups: dict[str, list[Example]] = defaultdict(list)
    for example in examples:
        groups[_group_key(example, group_by)].append(example)
    order = sorted(groups, key=lambda g: hashlib.sha256(f"{seed}:group:{g}".encode()).hexdigest())
    targets = {"test": len(examples) * ratios[2], "validation": len(examples) * ratios[1]}
    out: dict[str, list[Example]] = {name: [] for name in SPLITS}
    for group in order:
        out[_open_split(out, targets, len(groups[group]))].extend(groups[group])
    for name in SPLITS:
        out[name].sort(key=lambda e: _rank(e, seed))
    return out


def _open_split(out: dict[str, list[Example]], targets: dict[str, float], size: int) -> str:
    # A group joins an evaluation split while that brings its size closer to the target.
    for name in ("test", "validation"):
        if abs(len(out[name]) + size - targets[name]) < abs(len(out[name]) - targets[name]):
            return name
    return "train"


def assign_given_splits(
    train: list[Example],
    validation: list[Example] | None = None,
    test: list[Example] | None = None,
    *,
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    group_by: str | None = None,
) -> dict[str, list[Example]]:
    """Splits the user supplied are kept exactly as given; only the missing ones are carved out
    of `train`, in the proportions `ratios` give them relative to train."""
    given = {"validation": validation, "test": test}
    wanted = tuple(0.0 if given.get(name) is not None else r for name, r in zip(SPLITS, ratios))
    total = sum(wanted)
    carved = split_examples(train, tuple(r / total for r in wanted), seed, group_by)  # type: ignore[arg-type]
    return {name: list(given[name]) if given.get(name) is not None else carved[name] for name in SPLITS}  # type: ignore[arg-type]


def _prompt_key(example: Example) -> str:
    return Example(id="", messages=example.prompt_messages).content_key()


def check_overlap(splits: dict[str, list[Example]]) -> OverlapReport:
    train_keys = {e.content_key() for e in splits["train"]}
    train_prompts = {_prompt_key(e) for e in splits["train"]}
    return OverlapReport(
        validation_in_train=sum(e.content_key() in train_keys for e in splits["validation"]),
        test_in_train=sum(e.content_key() in train_keys for e in splits["test"]),
        test_prompts_in_train=sum(_prompt_key(e) in train_prompts for e in splits["test"]),
    )


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


def remove_leaks(splits: dict[str, list[Example]], near_threshold: float | None = None) -> dict[str, int]:
    """Evaluation examples whose prompt also appears in train would measure memory, not skill.
    Removes them from `splits` in place; returns how many left each evaluation split."""
    return remove_leaks_detailed(splits, near_threshold).removed


def remove_leaks_detailed(splits: dict[str, list[Example]], near_threshold: float | None = None) -> LeakReport:
    """Exact prompt matches, and with `near_threshold` also prompts that are near-duplicates of a
    training prompt (a reworded copy leaks the answer just the same)."""
    from tunesmith.data.dedup import near_duplicate_pairs  # datasketch only when near checks are asked for

    train_prompts = {_prompt_key(e) for e in splits["train"]}
    exact, near, pairs = {}, {}, []
    for name in ("validation", "test"):
        before = len(splits[name])
        splits[name] = [e for e in splits[name] if _prompt_key(e) not in train_prompts]
        exact[name] = before - len(splits[name])
        if near_threshold is not None:
            found = dict(near_duplicate_pairs(splits[name], splits["train"], near_threshold, prompt_only=True))
            splits[name] = [e for e in splits[name] if e.id not in found]
            near[name] = len(found)
            pairs += [LeakedPair(split=name, removed=c, train_id=t, kind="near") for c, t in found.items()]
    return LeakReport(exact=exact, near=near, near_threshold=near_threshold, pairs=pairs[:MAX_LISTED])


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
    rule = (f"a paired comparison of a 0/1 metric (McNemar, 95% confidence, 80% power, assuming 20% of answers change) "
            f"needs about {needed} to detect a {TARGET_GAIN * 100:.0f}-point gain")
    if n < min_significant_size():
        verdict = f"no difference between two models can be significant on {n} example(s)"
    else:
        detectable = next((g for g in range(11, 51) if paired_sample_size(g / 100) <= n), None)
        verdict = (f"on {n} examples only a gain of about {detectable} points or more can reliably be told from chance" if detectable
                   else f"on {n} examples even a 50-point gain is likely to look like chance")
    fix = f"add examples to your {name} file" if given else f"add examples, give --{name}-file, or raise the {name} share of --split"
    return f"small_{name}_split: {verdict}; {rule}. {fix[0].upper()}{fix[1:]}"
