"""Deterministic train/validation/test split by seed, and the check that no test example leaked."""

from __future__ import annotations

import hashlib
from collections import defaultdict

from pydantic import BaseModel

from tunesmith.data.example import Example

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


def drop_exact_duplicates(examples: list[Example]) -> tuple[list[Example], int]:
    seen: set[str] = set()
    kept = []
    for example in examples:
        key = example.content_key()
        if key not in seen:
            seen.add(key)
            kept.append(example)
    return kept, len(examples) - len(kept)


def split_examples(examples: list[Example], ratios: tuple[float, float, float], seed: int) -> dict[str, list[Example]]:
    """Split per label when examples carry one, so every class appears in every split."""
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


def remove_leaks(splits: dict[str, list[Example]]) -> dict[str, int]:
    """Evaluation examples whose prompt also appears in train would measure memory, not skill."""
    train_prompts = {_prompt_key(e) for e in splits["train"]}
    removed = {}
    for name in ("validation", "test"):
        before = len(splits[name])
        splits[name] = [e for e in splits[name] if _prompt_key(e) not in train_prompts]
        removed[name] = before - len(splits[name])
    return removed
