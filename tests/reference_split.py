"""The list-based reference for rowsplit.py: the seeded split, given splits, the leak check and the
overlap check on lists of Example objects.

`data prepare` splits examples held as Rows (rowsplit.py); this is the same set of rules written
plainly (split.py's `_share` and `_open_split` are shared), kept only for tests to check the
streaming version against (test_rows.py) and to state the rules' behaviour (test_split.py).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict

from reference_dedup import near_duplicate_pairs

from tunesmith.data.example import Example
from tunesmith.data.split import MAX_LISTED, SPLITS, LeakedPair, LeakReport, OverlapReport, _open_split, _share
from tunesmith.errors import UserError


def _rank(example: Example, seed: int) -> str:
    # Ranking by a keyed hash of the content makes the split independent of file order and
    # stable when examples are added: an example keeps its split.
    return hashlib.sha256(f"{seed}:{example.content_key()}".encode()).hexdigest()


def split_examples(examples: list[Example], ratios: tuple[float, float, float], seed: int, group_by: str | None = None) -> dict[str, list[Example]]:
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


def remove_leaks(splits: dict[str, list[Example]], near_threshold: float | None = None) -> dict[str, int]:
    """Evaluation examples whose prompt also appears in train would measure memory, not skill.
    Removes them from `splits` in place; returns how many left each evaluation split."""
    return remove_leaks_detailed(splits, near_threshold).removed


def remove_leaks_detailed(splits: dict[str, list[Example]], near_threshold: float | None = None) -> LeakReport:
    """Exact prompt matches, and with `near_threshold` also prompts that are near-duplicates of a
    training prompt (a reworded copy leaks the answer just the same)."""
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
